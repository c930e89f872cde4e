#!/usr/bin/env bash
# Builds engram-store and runs the whole test suite: every unit and
# integration test, the Python client test, a clang build that checks the
# lock annotations (-Wthread-safety), the store's concurrency tests once
# more under ThreadSanitizer, and every fuzzer (fuzz/) for a bounded time
# under AddressSanitizer + UBSan. Installs missing Debian packages first.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

bash scripts/install_deps.sh

echo "== build (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS"

echo "== tests"
(cd build && ctest -j"$JOBS" --output-on-failure)

echo "== clang -Wthread-safety + AddressSanitizer: every library and engramd (build-tsa/)"
cmake -S . -B build-tsa -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
  -DENGRAM_WITH_CUDA=OFF -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_BENCH=OFF \
  -DENGRAM_SANITIZE=address \
  "-DCMAKE_CXX_FLAGS=-O0 -Wthread-safety -Werror=thread-safety" >/dev/null
cmake --build build-tsa -j"$JOBS"

echo "== AddressSanitizer: engramd started and stopped with work in flight"
# The shutdown suite (loads, Load requests, credential reloads, probers,
# recovery, watch streams, idle clients) against the ASan engramd: any
# use after free or leak at exit makes it exit non-zero, which fails it.
ENGRAM_TEST_ENGRAMD=build-tsa/server/engramd \
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86" \
  build/tests/shutdown_test

echo "== ThreadSanitizer: store and device-version concurrency tests (build-tsan/)"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DENGRAM_SANITIZE=thread -DENGRAM_BUILD_BENCH=OFF -DENGRAM_WITH_CUDA=OFF >/dev/null
cmake --build build-tsan -j"$JOBS" --target layer_registry_test gather_test \
  device_versions_test
# TSan needs a non-randomized address space on some kernels.
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  setarch "$(uname -m)" -R build-tsan/tests/layer_registry_test
TSAN_OPTIONS="halt_on_error=1" \
  setarch "$(uname -m)" -R build-tsan/tests/gather_test
TSAN_OPTIONS="halt_on_error=1" \
  setarch "$(uname -m)" -R build-tsan/tests/device_versions_test
echo "== libFuzzer: every request parser and decoder, 15 s each (build-fuzz/)"
bash scripts/fuzz.sh 15
echo "== all tests passed"
