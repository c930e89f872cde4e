// Retry pacing, one type for every scheme: reconnecting channels, watch
// streams, remembered failures. A policy is numbers; Backoff walks one.
#ifndef ENGRAM_COMMON_BACKOFF_H_
#define ENGRAM_COMMON_BACKOFF_H_

#include <algorithm>
#include <chrono>

namespace engram {

// Waits start at `initial` and grow by `multiplier` up to `max` (a fixed
// interval when initial == max). A plain value.
struct BackoffPolicy {
  std::chrono::milliseconds initial{100};
  std::chrono::milliseconds max{1000};
  double multiplier = 2;
};

// Channels to another engramd (client to shards, shard to shard): a
// restarted server must be reachable again within a probe or two.
inline constexpr BackoffPolicy kServerReconnect{
    std::chrono::milliseconds(100), std::chrono::milliseconds(1000), 2};

// The waits of one retrying loop under a policy. Not thread-safe: one per
// loop.
class Backoff {
 public:
  explicit Backoff(BackoffPolicy policy)
      : policy_(policy), next_(policy.initial) {}

  // The wait before the next try; each call lengthens the one after.
  std::chrono::milliseconds Next() {
    const std::chrono::milliseconds wait = next_;
    next_ = std::min(
        policy_.max,
        std::chrono::milliseconds(static_cast<int64_t>(
            static_cast<double>(next_.count()) * policy_.multiplier)));
    return wait;
  }
  // After a success: the next failure waits `initial` again.
  void Reset() { next_ = policy_.initial; }

 private:
  BackoffPolicy policy_;
  std::chrono::milliseconds next_;
};

}  // namespace engram

#endif  // ENGRAM_COMMON_BACKOFF_H_
