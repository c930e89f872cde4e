// A background thread that does one piece of work every period.
#ifndef ENGRAM_COMMON_PERIODIC_THREAD_H_
#define ENGRAM_COMMON_PERIODIC_THREAD_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <stop_token>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace engram {

// Runs `tick` on its own thread every `period` (the first time at once, or
// after one period) until `tick` returns false or Stop() is called. Owns the
// thread: Stop() - also run by the destructor - wakes it, waits for a tick
// in progress and joins, so nothing `tick` uses may be destroyed before it.
// A long tick polls `stop.stop_requested()` to end early. Start once, from
// one thread; Stop and Wake are thread-safe (never from inside `tick`).
class PeriodicThread {
 public:
  enum class First { kAtOnce, kAfterOnePeriod };
  using Tick = std::function<bool(const std::stop_token& stop)>;

  PeriodicThread() = default;
  ~PeriodicThread() { Stop(); }
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  void Start(std::chrono::nanoseconds period, First first, Tick tick);
  // Idempotent; a thread never started stops at once.
  void Stop();
  // Runs the next tick now instead of at the end of the period.
  void Wake();
  bool started() const { return thread_.joinable(); }

 private:
  Mutex mu_;
  std::condition_variable_any wake_;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  std::jthread thread_;
};

}  // namespace engram

#endif  // ENGRAM_COMMON_PERIODIC_THREAD_H_
