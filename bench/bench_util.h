// Small helpers shared by the benchmarks: flags, timing loops and
// percentiles.
#ifndef ENGRAM_BENCH_BENCH_UTIL_H_
#define ENGRAM_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/command_line.h"

namespace engram::bench {

using Clock = std::chrono::steady_clock;

// Reads argv into the bench's ABSL_FLAGs: --help prints `usage` and the
// flags and exits 0; an unknown flag, a bad value or an argument exits 2.
inline void ParseBenchFlags(int argc, char** argv, const char* usage) {
  absl::StatusOr<CommandLine> line = ParseCommandLine(argc, argv);
  if (line.ok() && line->help) {
    std::printf("%s", FlagsHelp(usage).c_str());
    std::exit(0);
  }
  if (line.ok() && !line->positional.empty()) {
    line = absl::InvalidArgumentError("unexpected argument '" +
                                      line->positional.front() + "'");
  }
  if (!line.ok()) {
    std::fprintf(stderr, "%s: %s\n", argv[0],
                 std::string(line.status().message()).c_str());
    std::exit(2);
  }
}

struct RunStats {
  int64_t calls = 0;
  double seconds = 0;
  double p50_us = 0;
  double p99_us = 0;
  double calls_per_s() const { return calls / seconds; }
};

// Runs `call(caller_index)` in a loop on `callers` threads for `seconds`
// (after a short warm-up) and returns throughput and latency percentiles.
// `call` returns false to report a failure, which aborts the run.
inline RunStats RunClosedLoop(int callers, double seconds,
                              const std::function<bool(int)>& call) {
  for (int c = 0; c < callers; ++c) {  // warm-up: connections, caches
    for (int i = 0; i < 3; ++i) call(c);
  }
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(callers);
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  std::atomic<bool> failed{false};
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      while (!stop.load(std::memory_order_relaxed)) {
        const auto t0 = Clock::now();
        if (!call(c)) {
          failed = true;
          return;
        }
        latencies[c].push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - t0)
                .count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  RunStats stats;
  stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  stats.calls = failed ? 0 : static_cast<int64_t>(all.size());
  if (!all.empty()) {
    std::sort(all.begin(), all.end());
    stats.p50_us = all[all.size() / 2];
    stats.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return stats;
}

}  // namespace engram::bench

#endif  // ENGRAM_BENCH_BENCH_UTIL_H_
