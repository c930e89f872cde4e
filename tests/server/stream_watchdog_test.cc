#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "server/read_stream.h"

namespace engram {
namespace {

using std::chrono::milliseconds;

// A stream whose activity the test sets: busy, or idle since a time.
class TestStream : public IdleStream {
 public:
  explicit TestStream(int64_t since = MonotonicNowNs()) : since_(since) {}
  int64_t last_activity_ns() const override { return since_.load(); }
  void EndIdle() override { ended_.fetch_add(1); }
  void Touch() { since_ = MonotonicNowNs(); }
  void SetBusy() { since_ = kBusy; }
  int ended() const { return ended_.load(); }

 private:
  std::atomic<int64_t> since_;
  std::atomic<int> ended_{0};
};

bool WaitFor(const std::function<bool()>& done, milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

TEST(StreamWatchdogTest, CapsTheStreamsOpenAtOnce) {
  StreamWatchdog watchdog(milliseconds(0), /*max_streams=*/2);
  TestStream a, b, c;
  EXPECT_TRUE(watchdog.Watch(&a));
  EXPECT_TRUE(watchdog.Watch(&b));
  EXPECT_FALSE(watchdog.Watch(&c));
  watchdog.Forget(&a);
  EXPECT_TRUE(watchdog.Watch(&c));
}

TEST(StreamWatchdogTest, EndsIdleStreamsOnceAndSparesBusyAndActiveOnes) {
  StreamWatchdog watchdog(milliseconds(80), /*max_streams=*/0);
  TestStream idle, busy, active;
  busy.SetBusy();
  ASSERT_TRUE(watchdog.Watch(&idle));
  ASSERT_TRUE(watchdog.Watch(&busy));
  ASSERT_TRUE(watchdog.Watch(&active));
  std::atomic<bool> stop{false};
  std::thread toucher([&] {
    while (!stop) {
      active.Touch();
      std::this_thread::sleep_for(milliseconds(10));
    }
  });
  ASSERT_TRUE(WaitFor([&] { return idle.ended() > 0; }, milliseconds(2000)));
  std::this_thread::sleep_for(milliseconds(300));  // several more checks
  stop = true;
  toucher.join();
  EXPECT_EQ(idle.ended(), 1);  // unregistered when ended: never again
  EXPECT_EQ(busy.ended(), 0);
  EXPECT_EQ(active.ended(), 0);
  watchdog.Forget(&busy);
  watchdog.Forget(&active);
}

// Streams come and go while the checker runs: a forgotten stream is never
// ended afterwards (Forget waits for a check in progress).
TEST(StreamWatchdogTest, ForgottenStreamsAreNeverTouched) {
  StreamWatchdog watchdog(milliseconds(1), /*max_streams=*/0);
  for (int round = 0; round < 200; ++round) {
    auto stream = std::make_unique<TestStream>(0);  // idle since forever
    ASSERT_TRUE(watchdog.Watch(stream.get()));
    std::this_thread::sleep_for(std::chrono::microseconds(round * 50));
    watchdog.Forget(stream.get());
    EXPECT_LE(stream->ended(), 1);
    stream.reset();  // a use after free here fails under ASan
  }
}

}  // namespace
}  // namespace engram
