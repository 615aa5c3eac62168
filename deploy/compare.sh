#!/usr/bin/env bash
# deploy/compare.sh [postgres|etcd]...
# Measures raftsql beside PostgreSQL (quorum-sync primary + 2 standbys) and a 3-member etcd with
# ../shared/bench's compare scripts, in one run each: starts a 3-node raftsql cluster from
# target/release on 127.0.0.1 (ports picked at run time, data under TMPDIR), gives the compare
# scripts `raftsql --addr ... bench ... --format json` as their --raftsql command, and stops the
# nodes it started (by pid) and removes their data whatever happens.
# Env: BENCH_SECS, BENCH_KEYS, BENCH_POINTS as the compare scripts take them; SHARED (../shared).
# Output: the compare scripts' JSON lines and tables on stdout; logs on stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
bin=$root/target/release
[ -x "$bin/raftsql-server" ] && [ -x "$bin/raftsql" ] ||
  (cd "$root" && cargo build --release -p raftsql-server -p raftsql-shell >&2)
which=${*:-postgres etcd}
work=$(mktemp -d "${TMPDIR:-/tmp}/raftsql-compare-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Six free ports, kept by nothing once chosen (a race with other programs is possible but harmless:
# the node would fail to start and the script stop): a client port and a peer port per node, as
# deploy/ runs them (peers then run on the node's Raft runtime).
read -r p1 p2 p3 q1 q2 q3 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(6)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
boot="1=127.0.0.1:$p1/127.0.0.1:$q1,2=127.0.0.1:$p2/127.0.0.1:$q2,3=127.0.0.1:$p3/127.0.0.1:$q3"
i=0
for p in $p1 $p2 $p3; do
  i=$((i + 1))
  q=$(eval echo "\$q$i")
  "$bin/raftsql-server" --id $i --listen 127.0.0.1:$p --peer-listen 127.0.0.1:$q --data-dir "$work/n$i" \
    --bootstrap "$boot" >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
addrs=127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3
for _ in $(seq 300); do
  "$bin/raftsql" --addr "$addrs" -e 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin/raftsql" --addr "$addrs" -e 'SELECT 1' >/dev/null || { tail -20 "$work"/n*.log >&2; exit 1; }
echo "compare.sh: raftsql $(git -C "$root" rev-parse --short HEAD) on $addrs" >&2

cmd="'$bin/raftsql' --addr '$addrs' bench --workload {bench} --clients {clients} --duration {secs} --rows {keys} --format json"
for w in $which; do
  case $w in
    postgres) "$shared/bench/compare-postgres" --raftsql "$cmd" ;;
    etcd) "$shared/bench/compare-etcd" --raftsql "$cmd" ;;
    *) echo "compare.sh: unknown reference $w (postgres or etcd)" >&2; exit 2 ;;
  esac
done
for p in "${pids[@]}"; do
  echo "compare.sh: node pid $p RSS $(awk '/VmRSS/ {print $2 " kB"}' /proc/$p/status 2>/dev/null)" >&2
done
