#!/usr/bin/env bash
# Builds the Dockerfile for real without a Docker engine and exercises the
# image: Debian 12 base images are made locally (debootstrap minbase, then
# buildah commit), the Dockerfile is built with buildah (chroot isolation,
# vfs storage), engramd is started from the image, and engramctl on the host
# drives health, populate and lookup through it.
#
#   bash deploy/image_test.sh            # ~15-25 min on 2 cores, first run
#
# Needs root and Debian's mirror (deb.debian.org). Base images are cached in
# buildah's storage; the debootstrap tree in $ENGRAM_IMAGE_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${ENGRAM_IMAGE_CACHE:-/var/tmp/engram-image-cache}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/engram-store:test
B="buildah --storage-driver vfs"
export BUILDAH_ISOLATION=chroot

bash scripts/install_deps.sh
bash deploy/install_deploy_deps.sh
cmake -S . -B build -G Ninja >/dev/null && cmake --build build -j2 --target engramctl >/dev/null
CTL="$ROOT/build/client/engramctl"

step() { echo "== $*"; }

step "base images debian:bookworm and debian:bookworm-slim"
if ! $B inspect --type image docker.io/library/debian:bookworm >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/rootfs.tar" ]; then
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log"
    tar -C "$CACHE/rootfs" -cf "$CACHE/rootfs.tar" .
    rm -rf "$CACHE/rootfs"
  fi
  ctr=$($B from scratch)
  mnt=$($B mount "$ctr")
  tar -C "$mnt" -xf "$CACHE/rootfs.tar"
  $B umount "$ctr" >/dev/null
  $B config --cmd /bin/bash "$ctr"
  $B commit -q "$ctr" docker.io/library/debian:bookworm >/dev/null
  $B rm "$ctr" >/dev/null
fi
$B tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim

step "buildah bud (the Dockerfile)"
start=$(date +%s)
$B bud --isolation chroot --pull-never --layers=false --build-arg JOBS=2 \
  -t "$IMAGE" . >"$CACHE/bud.log" 2>&1 || { tail -40 "$CACHE/bud.log"; exit 1; }
echo "built $IMAGE in $(( $(date +%s) - start )) s"
$B inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}} ports={{.OCIv1.Config.ExposedPorts}}' "$IMAGE"
$B images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep engram-store

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); MPORT=$(free_port)
ctr=$($B from "$IMAGE")
cleanup() {
  pkill -TERM -f "^/usr/local/bin/engramd .*--listen=127.0.0.1:$PORT" 2>/dev/null || true
  sleep 2
  $B rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "run engramd from the image (uid $($B run --isolation chroot "$ctr" -- id -u))"
# As the image's ENTRYPOINT starts it (port file, loopback health listener),
# with this test's ports in place of CMD.
entrypoint=$(sed -n 's/^ENTRYPOINT \[\(.*\)\]/\1/p' Dockerfile | tr -d '",')
$B run --isolation chroot "$ctr" -- $entrypoint --listen=127.0.0.1:$PORT \
  --metrics_listen=127.0.0.1:$MPORT --demo >"$CACHE/engramd.log" 2>&1 &
for i in $(seq 100); do
  "$CTL" --address=127.0.0.1:$PORT --timeout_s=1 health >/dev/null 2>&1 && break
  sleep 0.2
done

step "health from the host, and the image's HEALTHCHECK command inside it"
"$CTL" --address=127.0.0.1:$PORT health
healthcheck=$(sed -n 's/^  CMD \[\(.*\)\]/\1/p' Dockerfile | tr -d '",')
$B run --isolation chroot "$ctr" -- $healthcheck

step "demo lookup"
"$CTL" --address=127.0.0.1:$PORT lookup --layer=0 --ids=5,6,7,8 --shape=1,1,4

step "populate from .npy and look up"
tmp=$(mktemp -d)
/usr/bin/python3 - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
np.save(d + "/h0.npy", np.arange(40, dtype=np.float32).reshape(10, 4))
np.save(d + "/h1.npy", -np.arange(28, dtype=np.float32).reshape(7, 4))
PY
"$CTL" --address=127.0.0.1:$PORT populate --layer=7 "$tmp/h0.npy" "$tmp/h1.npy"
"$CTL" --address=127.0.0.1:$PORT lookup --layer=7 --ids=9,6 --shape=1,1,2 --out="$tmp/rows.npy"
/usr/bin/python3 - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
got = np.load(d + "/rows.npy")
want = np.stack([np.load(d + "/h0.npy")[9], np.load(d + "/h1.npy")[6]]).reshape(1, 1, 2, 4)
assert (got == want).all(), (got, want)
print("rows from the image match numpy:", got.ravel().tolist())
PY
rm -rf "$tmp"

step "metrics"
curl -fsS "http://127.0.0.1:$MPORT/metrics" | grep -E '^engram_(layers|requests_total\{code="OK",rpc="Lookup"\})'

step "SIGTERM drains and exits 0"
pkill -TERM -f "^/usr/local/bin/engramd .*--listen=127.0.0.1:$PORT"
for i in $(seq 50); do pgrep -f "^/usr/local/bin/engramd .*--listen=127.0.0.1:$PORT" >/dev/null || break; sleep 0.2; done
grep -E "draining|stopped" "$CACHE/engramd.log"
grep -q "engramd: stopped" "$CACHE/engramd.log"
echo "== image test passed"
