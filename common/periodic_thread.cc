#include "common/periodic_thread.h"

namespace engram {

void PeriodicThread::Start(std::chrono::nanoseconds period, First first,
                           Tick tick) {
  thread_ = std::jthread([this, period, first,
                          tick = std::move(tick)](std::stop_token stop) {
    bool wait = first == First::kAfterOnePeriod;
    while (true) {
      if (wait) {
        MutexLock lock(&mu_);
        // Returns at the period's end, on Wake(), or on a stop request.
        wake_.wait_for(lock, stop, period,
                       [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                         return woken_;
                       });
        woken_ = false;
      }
      wait = true;
      if (stop.stop_requested() || !tick(stop)) return;
    }
  });
}

void PeriodicThread::Stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();  // wakes the wait through its stop callback
  thread_.join();
}

void PeriodicThread::Wake() {
  {
    MutexLock lock(&mu_);
    woken_ = true;
  }
  wake_.notify_all();
}

}  // namespace engram
