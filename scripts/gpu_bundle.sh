#!/usr/bin/env bash
# Packs what the GPU checks need into .device/ (git-ignored) for the GPU
# machine, which has CUDA but no gRPC: stripped binaries built here and the
# shared libraries they load that a CUDA image lacks: every test binary
# ctest labels `gpu` (listed in .device/gpu_tests), engramd and the GPU
# benches. Then, from the repo
# root, the device tool runs `bash scripts/gpu_check.sh` with carry
# [".device"] (docs/gpu.md, "Checking on a GPU").
#
# The GPU machine's python3 (with PyTorch) is 3.12; Debian 12's is 3.11. With
# a Python 3.12 that has its headers here (GPU_PYTHON, default: pyenv's
# 3.12 when present), the package is built for it too (ENGRAM_EXTRA_PYTHON)
# and packed into .device/python, for the torch test and bench.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
gpu_python=${GPU_PYTHON:-$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3 2>/dev/null | tail -n 1 || true)}
if [ -n "$gpu_python" ]; then
  cmake "$build" -DENGRAM_EXTRA_PYTHON="$gpu_python" >/dev/null
else
  echo "no Python 3.12 with headers (GPU_PYTHON): the torch check will skip"
fi
# Everything: ctest's test list (and so its labels) exists once the test
# binaries are built.
cmake --build "$build" -j2
rm -rf .device
mkdir -p .device/lib
ctest --test-dir "$build" -L gpu --show-only=json-v1 | python3 -c '
import json, os, sys
seen = []
for t in json.load(sys.stdin)["tests"]:
    b = t["command"][0]
    if b not in seen: seen.append(b)
print("\n".join(seen))' >.device/gpu_test_paths
[ -s .device/gpu_test_paths ] || { echo "ctest lists no gpu tests"; exit 1; }
xargs -n1 basename <.device/gpu_test_paths >.device/gpu_tests
mapfile -t bins < <(cat .device/gpu_test_paths)
rm .device/gpu_test_paths
bins+=("$build/server/engramd" "$build/bench/device_lookup_bench"
       "$build/bench/gpu_gather_bench")
for b in "${bins[@]}"; do strip -o ".device/$(basename "$b")" "$b"; done
# The token lookups' checkpoint (the GPU machine's python3 may lack numpy).
/usr/bin/python3 scripts/make_deepseek_v41_demo.py .device/deepseek_demo >/dev/null
if [ -n "$gpu_python" ]; then
  version=$("$gpu_python" -c 'import sysconfig; print(sysconfig.get_python_version())')
  mkdir -p .device/python
  cp -r "$build/python$version/engram_store" .device/python/
  strip .device/python/engram_store/_engram_store*.so
  bins+=(.device/python/engram_store/_engram_store*.so)
fi
# Everything they load but the C/C++ runtime, which the image has (newer).
ldd "${bins[@]}" | awk '/=>/ {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*|libpthread|libdl|librt|libcuda)\.so' |
  while read -r lib; do cp -L "$lib" .device/lib/; done
grep -qx '/.device/' .git/info/exclude 2>/dev/null ||
  echo '/.device/' >> .git/info/exclude
du -sh .device
