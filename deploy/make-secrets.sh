#!/usr/bin/env bash
# deploy/make-secrets.sh: a raftsql cluster's CAs, node and user certificates, a users file with
# an admin token, and the Kubernetes Secrets that carry them (`<name>-tls`, `<name>-users`).
#
#   deploy/make-secrets.sh OUT_DIR [--replicas 3] [--name raftsql] [--service raftsql-peers] [--namespace default]
#                          [--domain raftsql] [--days 365] [--host NAME_OR_IP]... [--user NAME]...
#                          [--renew]
#   kubectl apply -f OUT_DIR/secrets.yaml
#
# It runs `raftsql-server make-certs` (RAFTSQL_SERVER names the binary; else the one on PATH;
# else it is built with cargo). Keep OUT_DIR/ca/*.key offline: `--renew` re-issues every
# certificate from them before they expire. docs/security.md explains each file.
set -euo pipefail
out=${1:?usage: deploy/make-secrets.sh OUT_DIR [make-certs flags]}
shift
if [[ -n "${RAFTSQL_SERVER:-}" ]]; then
  bin=("$RAFTSQL_SERVER")
elif command -v raftsql-server >/dev/null 2>&1; then
  bin=(raftsql-server)
else
  bin=(cargo run --quiet --release -p raftsql-server --manifest-path "$(dirname "$0")/../Cargo.toml" --)
fi
exec "${bin[@]}" make-certs --out "$out" "$@"
