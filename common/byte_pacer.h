// Pacing a stream of bytes to a rate: engramd --load_max_mib_per_second
// keeps checkpoint reads from saturating a disk or a shared file system
// that other processes (or every shard of a restarting cluster) use too.
#ifndef ENGRAM_COMMON_BYTE_PACER_H_
#define ENGRAM_COMMON_BYTE_PACER_H_

#include <atomic>
#include <chrono>
#include <cstdint>

#include "common/mutex.h"

namespace engram {

// Hands out back-to-back time slots, one per chunk, each as long as the
// chunk takes at `bytes_per_second`; a caller waits for its slot's start,
// so a chunk passes at once when the flow has been idle and the average
// rate never exceeds the limit. Rate 0: unlimited (never waits).
// Thread-safe: threads reading one table in parallel share one pacer.
class BytePacer {
 public:
  explicit BytePacer(double bytes_per_second)
      : bytes_per_second_(bytes_per_second) {}

  bool limited() const { return bytes_per_second_ > 0; }

  // Waits until `bytes` more may pass. Returns false, having given up its
  // slot's wait, once `stop` is true (checked at least every 50 ms).
  bool Wait(uint64_t bytes, const std::atomic<bool>& stop);

 private:
  const double bytes_per_second_;
  Mutex mu_;
  // When the next slot may start (the end of the last one handed out).
  std::chrono::steady_clock::time_point next_free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_COMMON_BYTE_PACER_H_
