#!/usr/bin/env bash
# deploy/image/rootfs.sh OUT BIN_DIR: the image's whole file system, for a `FROM scratch` image.
#
#   OUT/rootfs/usr/local/bin/raftsql-server   the entrypoint (StatefulSet identity from the
#   OUT/rootfs/usr/local/bin/raftsql          hostname, configuration from RAFTSQL_*) and the shell
#   OUT/rootfs/<each library ldd lists>       at the path the loader looks for it
#   OUT/rootfs/etc/{passwd,group,nsswitch.conf}
#   OUT/data/                                 becomes /data, owned by the image's user
#
# Both ways of building the image use it: deploy/build-image (no registry, binaries built here)
# and deploy/Dockerfile (a registry's rust image builds them), so they cannot drift apart.
set -euo pipefail
out=${1:?usage: rootfs.sh OUT BIN_DIR}
bin=${2:?usage: rootfs.sh OUT BIN_DIR}
uid=10001
rm -rf "$out"
mkdir -p "$out/rootfs/usr/local/bin" "$out/rootfs/etc" "$out/rootfs/tmp" "$out/data"
chmod 1777 "$out/rootfs/tmp"
for b in raftsql-server raftsql; do
  [[ -x "$bin/$b" ]] || { echo "rootfs.sh: $bin/$b is missing: build it first" >&2; exit 1; }
  # Debug info is most of a binary's size and nothing in a container reads it.
  strip -o "$out/rootfs/usr/local/bin/$b" "$bin/$b"
done
# Exactly the shared libraries the binaries load, at the paths they are loaded from (the
# loader's own path is in the binary; `=> /path` lines name the rest).
for b in raftsql-server raftsql; do
  ldd "$bin/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$out/rootfs$(dirname "$lib")"
  cp -L "$lib" "$out/rootfs$lib"
done
printf 'root:x:0:0:root:/:/nonexistent\nraftsql:x:%d:%d:raftsql:/data:/nonexistent\n' $uid $uid >"$out/rootfs/etc/passwd"
printf 'root:x:0:\nraftsql:x:%d:\n' $uid >"$out/rootfs/etc/group"
# glibc resolves names through NSS: /etc/hosts first, then DNS (the container runtime provides
# both files at run time; glibc >= 2.34 has files and dns built in).
printf 'hosts: files dns\n' >"$out/rootfs/etc/nsswitch.conf"
echo "rootfs.sh: $(du -sh "$out/rootfs" | cut -f1) in $out/rootfs"
