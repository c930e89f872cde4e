#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer in build-fuzz/, and runs each for a bounded time
# over its seed corpus (fuzz/corpus/<target>/). Any crash, leak or sanitizer
# report fails the run (libFuzzer exits non-zero and leaves the input in
# build-fuzz/artifacts/). Prints executions and coverage per target.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 20
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-20}
JOBS=${JOBS:-2}
TARGETS="lookup_request_fuzz gather_request_fuzz populate_fuzz wire_format_fuzz npy_fuzz safetensors_fuzz manifest_fuzz"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fsanitize=fuzzer-no-link"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DENGRAM_FUZZ=ON -DENGRAM_WITH_CUDA=OFF -DENGRAM_BUILD_TESTS=OFF \
  -DENGRAM_BUILD_BENCH=OFF "-DCMAKE_CXX_FLAGS=$SAN" \
  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
# shellcheck disable=SC2086
cmake --build build-fuzz -j"$JOBS" --target $TARGETS
mkdir -p build-fuzz/artifacts
for t in $TARGETS; do
  corpus=build-fuzz/corpus/$t
  mkdir -p "$corpus"
  # Seeds from the repo; what a run finds stays in build-fuzz only.
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  log=build-fuzz/$t.log
  if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      build-fuzz/fuzz/"$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix=build-fuzz/artifacts/"$t"- "$corpus" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $t FAILED (input in build-fuzz/artifacts/)"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  echo "fuzz: $t ok: $runs executions, coverage $cov edges, corpus $(ls "$corpus" | wc -l) inputs"
done
