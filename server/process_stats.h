// What the kernel says about this process: memory, CPU time, descriptors
// and start time, for /metrics (the `process_*` names Prometheus clients
// use) and the Status RPC.
#ifndef ENGRAM_SERVER_PROCESS_STATS_H_
#define ENGRAM_SERVER_PROCESS_STATS_H_

#include <cstdint>

namespace engram {

// One reading. Fields the kernel does not give (not Linux, /proc hidden)
// stay 0.
struct ProcessStats {
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  double cpu_seconds = 0;  // user + system
  int64_t open_fds = 0;
  int64_t max_fds = 0;            // RLIMIT_NOFILE's soft limit
  double start_time_seconds = 0;  // since the Unix epoch
};

// Reads /proc/self (a few small files and the fd folder). Thread-safe.
ProcessStats ReadProcessStats();

}  // namespace engram

#endif  // ENGRAM_SERVER_PROCESS_STATS_H_
