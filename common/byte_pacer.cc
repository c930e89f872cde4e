#include "common/byte_pacer.h"

#include <algorithm>
#include <thread>

namespace engram {

bool BytePacer::Wait(uint64_t bytes, const std::atomic<bool>& stop) {
  if (!limited()) return !stop;
  using Clock = std::chrono::steady_clock;
  const auto length =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
          static_cast<double>(bytes) / bytes_per_second_));
  Clock::time_point start;
  {
    MutexLock lock(&mu_);
    start = std::max(Clock::now(), next_free_);
    next_free_ = start + length;
  }
  constexpr auto kStopCheck = std::chrono::milliseconds(50);
  for (auto now = Clock::now(); now < start; now = Clock::now()) {
    if (stop) return false;
    std::this_thread::sleep_for(
        std::min<Clock::duration>(start - now, kStopCheck));
  }
  return !stop;
}

}  // namespace engram
