#!/usr/bin/env bash
# Packs what the GPU checks need into .device/ (git-ignored) for the GPU
# machine, which has CUDA but no gRPC: stripped binaries built here and the
# shared libraries they load that a CUDA image lacks. Then, from the repo
# root, the device tool runs `bash scripts/gpu_check.sh` with carry
# [".device"] (docs/gpu.md, "Checking on a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
targets=(engramd device_lookup_test gpu_gather_test gpu_tier_test
         device_lookup_bench gpu_gather_bench)
cmake --build "$build" -j2 --target "${targets[@]}"
rm -rf .device
mkdir -p .device/lib
bins=("$build/server/engramd" "$build/tests/device_lookup_test"
      "$build/tests/gpu_gather_test" "$build/tests/gpu_tier_test"
      "$build/bench/device_lookup_bench" "$build/bench/gpu_gather_bench")
for b in "${bins[@]}"; do strip -o ".device/$(basename "$b")" "$b"; done
# Everything they load but the C/C++ runtime, which the image has (newer).
ldd "${bins[@]}" | awk '/=>/ {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*|libpthread|libdl|librt|libcuda)\.so' |
  while read -r lib; do cp -L "$lib" .device/lib/; done
grep -qx '/.device/' .git/info/exclude 2>/dev/null ||
  echo '/.device/' >> .git/info/exclude
du -sh .device
