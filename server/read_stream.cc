#include "server/read_stream.h"

#include <algorithm>
#include <vector>

namespace engram {

int64_t MonotonicNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

StreamWatchdog::StreamWatchdog(std::chrono::milliseconds idle_timeout,
                               int max_streams)
    : idle_timeout_(idle_timeout), max_streams_(max_streams) {
  if (idle_timeout_.count() <= 0) return;
  // Checks a few times per timeout, at most every second.
  const auto period = std::min<std::chrono::milliseconds>(
      std::chrono::seconds(1),
      std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10),
                                          idle_timeout_ / 4));
  checker_.Start(period, PeriodicThread::First::kAfterOnePeriod,
                 [this](const std::stop_token&) {
                   EndIdleStreams();
                   return true;
                 });
}

bool StreamWatchdog::Watch(IdleStream* stream) {
  MutexLock lock(&mu_);
  if (max_streams_ > 0 && static_cast<int>(streams_.size()) >= max_streams_) {
    return false;
  }
  streams_.insert(stream);
  return true;
}

void StreamWatchdog::Forget(IdleStream* stream) {
  MutexLock lock(&mu_);
  streams_.erase(stream);
}

void StreamWatchdog::EndIdleStreams() {
  const int64_t timeout_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(idle_timeout_)
          .count();
  const int64_t now = MonotonicNowNs();
  MutexLock lock(&mu_);
  std::vector<IdleStream*> idle;
  for (IdleStream* s : streams_) {
    const int64_t since = s->last_activity_ns();
    if (since != IdleStream::kBusy && now - since > timeout_ns) {
      idle.push_back(s);
    }
  }
  for (IdleStream* s : idle) {
    streams_.erase(s);
    s->EndIdle();  // under mu_: OnDone's Forget waits for this
  }
}

}  // namespace engram
