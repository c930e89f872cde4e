// Client-streaming reactors that other threads may end: a forced Remove
// aborting a populate, or the idle watchdog ending a stream that stopped
// sending. Shared by the populate, stage and cluster populate reactors.
#ifndef ENGRAM_SERVER_READ_STREAM_H_
#define ENGRAM_SERVER_READ_STREAM_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <unordered_set>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "common/mutex.h"
#include "common/periodic_thread.h"

namespace engram {

// A stream the watchdog can end. Implemented by EndableReadReactor.
class IdleStream {
 public:
  virtual ~IdleStream() = default;
  // Monotonic nanoseconds since the stream has been waiting for the
  // client, or kBusy while the server works on its last message.
  static constexpr int64_t kBusy = -1;
  virtual int64_t last_activity_ns() const = 0;
  // Ends the call with DEADLINE_EXCEEDED (no-op if it already ended).
  virtual void EndIdle() = 0;
};

// Caps the populate/stage streams open at once and ends those idle longer
// than a timeout (one thread). Streams register when they start reading and
// unregister in OnDone; EndIdle runs under the watchdog's lock, so an
// unregistered stream is never touched again. Thread-safe.
class StreamWatchdog {
 public:
  // `idle_timeout` <= 0 disables the idle check (no thread); `max_streams`
  // <= 0 disables the cap.
  StreamWatchdog(std::chrono::milliseconds idle_timeout, int max_streams);
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  // False (not registered) when max_streams are open already.
  bool Watch(IdleStream* stream);
  void Forget(IdleStream* stream);
  std::chrono::milliseconds idle_timeout() const { return idle_timeout_; }

 private:
  void EndIdleStreams();
  const std::chrono::milliseconds idle_timeout_;
  const int max_streams_;
  Mutex mu_;
  std::unordered_set<IdleStream*> streams_ ABSL_GUARDED_BY(mu_);
  PeriodicThread checker_;  // last: stopped before the set goes
};

int64_t MonotonicNowNs();

// A ServerReadReactor that finishes exactly once, whichever thread asks
// first: its own callbacks, an abort hook, or the watchdog. gRPC still
// serializes OnReadDone/OnDone; FinishOnce and the activity clock are the
// only members touched from other threads (atomics), so subclasses release
// what they hold in their own callbacks (OnDone at the latest). A read asked
// for after another thread finished the call completes with ok = false.
template <typename Request>
class EndableReadReactor : public grpc::ServerReadReactor<Request>,
                           public IdleStream {
 public:
  // `watchdog` (may be null) watches this stream from the first read until
  // OnDone; a subclass's OnDone must call Unwatch() first.
  explicit EndableReadReactor(StreamWatchdog* watchdog) : watchdog_(watchdog) {}

  int64_t last_activity_ns() const override {
    return last_activity_ns_.load(std::memory_order_relaxed);
  }
  void EndIdle() override {
    FinishOnce(
        grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                     "the stream sent nothing for longer than the idle timeout "
                     "(--stream_idle_timeout_seconds); nothing was kept"));
  }

  // Ends the call with `status` unless it has ended already; true if this
  // call ended it.
  bool FinishOnce(const grpc::Status& status) {
    if (finished_.exchange(true, std::memory_order_acq_rel)) return false;
    this->Finish(status);
    return true;
  }
  bool finished() const { return finished_.load(std::memory_order_acquire); }

 protected:
  // Asks for the next message (starts the watch on the first call; a
  // stream over the cap is ended RESOURCE_EXHAUSTED instead).
  void ReadNext(Request* request) {
    last_activity_ns_.store(MonotonicNowNs(), std::memory_order_relaxed);
    if (!watched_ && watchdog_ != nullptr) {
      if (!watchdog_->Watch(this)) {
        FinishOnce(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         "too many populate streams are open on this server "
                         "(--max_populate_streams); retry later"));
        return;
      }
      watched_ = true;
    }
    if (!finished()) this->StartRead(request);
  }
  // Called first thing in OnReadDone: the server, not the client, is the one
  // taking time until the next ReadNext.
  void MarkBusy() { last_activity_ns_.store(kBusy, std::memory_order_relaxed); }
  void Unwatch() {
    if (watched_) watchdog_->Forget(this);
    watched_ = false;
  }

 private:
  StreamWatchdog* const watchdog_;
  bool watched_ = false;  // touched by gRPC's serialized callbacks only
  std::atomic<bool> finished_{false};
  std::atomic<int64_t> last_activity_ns_{0};
};

// The read loop of a stream handled message by message on gRPC's thread:
// each message goes to OnMessage; an error from it to OnMessageError; the
// end of the stream (or an end another thread forced) to OnEndOfStream.
// Subclasses call StartReading() once, last thing in their constructor.
template <typename Request>
class MessageReadReactor : public EndableReadReactor<Request> {
 public:
  using EndableReadReactor<Request>::EndableReadReactor;

  void OnReadDone(bool ok) final {
    this->MarkBusy();
    if (!ok || this->finished()) {
      OnEndOfStream();
      return;
    }
    if (absl::Status s = OnMessage(request_); !s.ok()) {
      OnMessageError(s);
      return;
    }
    this->ReadNext(&request_);
  }

 protected:
  void StartReading() { this->ReadNext(&request_); }
  virtual absl::Status OnMessage(const Request& request) = 0;
  virtual void OnMessageError(const absl::Status& status) = 0;
  virtual void OnEndOfStream() = 0;

 private:
  Request request_;  // one read outstanding at a time
};

}  // namespace engram

#endif  // ENGRAM_SERVER_READ_STREAM_H_
