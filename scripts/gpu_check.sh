#!/usr/bin/env bash
# The GPU checks, on the GPU machine, from the repo root, with .device/
# made by scripts/gpu_bundle.sh carried along: every test ctest labels
# `gpu` (.device/gpu_tests: kernels, GPU tier, device lookups against
# real engramd processes), and the device-lookup benchmarks, C++ and (with
# .device/python) from PyTorch.
# Logs go to $OUT (the device tool's folder) when set. About 6 minutes.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
d=$PWD/.device
export LD_LIBRARY_PATH=$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ENGRAM_TEST_ENGRAMD=$d/engramd
export ENGRAM_TEST_DEEPSEEK_DEMO=$d/deepseek_demo
nvidia-smi -L || true
status=0
while read -r t; do
  echo "== $t"
  timeout 300 "$d/$t" --gtest_brief=1 </dev/null >"$out/$t.log" 2>&1 ||
    status=1
  tail -n 15 "$out/$t.log"
done <"$d/gpu_tests"
# The graph-replay-across-replace case once failed half its runs (a test
# race, fixed): run it many times.
echo "== device_lookup_test graph replay x16"
timeout 300 "$d/device_lookup_test" \
  --gtest_filter='*AGraphReplayAfterReplace*' --gtest_repeat=16 \
  >"$out/device_lookup_graph_repeat.log" 2>&1 || status=1
grep -cE '^\[ +OK' "$out/device_lookup_graph_repeat.log" | sed 's/^/passed runs: /'
grep -E 'FAILED|mixed' "$out/device_lookup_graph_repeat.log" | sort | uniq -c | head
echo "== device_lookup_bench"
timeout 300 "$d/device_lookup_bench" --engramd="$d/engramd" \
  2>&1 | tee "$out/device_lookup_bench.txt" || status=1
if [ -d "$d/python/engram_store" ]; then
  # The Python device path from PyTorch (the package built for this
  # machine's python3 by gpu_bundle.sh): tests, then the figures.
  echo "== torch device test"
  PYTHONPATH=$d/python timeout 300 python3 tests/python/test_torch_device.py \
    2>&1 | tee "$out/torch_device_test.txt" || status=1
  echo "== python_device_bench"
  PYTHONPATH=$d/python timeout 400 python3 bench/python_device_bench.py \
    --engramd="$d/engramd" 2>&1 | tee "$out/python_device_bench.txt" ||
    status=1
else
  echo "== torch device test: no .device/python (see gpu_bundle.sh)"
fi
echo "== gpu_gather_bench"
timeout 120 "$d/gpu_gather_bench" 2>&1 | tee "$out/gpu_gather_bench.txt" ||
  status=1
exit $status
