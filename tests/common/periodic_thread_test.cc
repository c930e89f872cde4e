#include "common/periodic_thread.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace engram {
namespace {

using std::chrono::milliseconds;

// Polls `done` for up to 10 s: no fixed sleeps.
template <typename F>
bool Eventually(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

TEST(PeriodicThreadTest, TicksEveryPeriodUntilStopped) {
  std::atomic<int> ticks{0};
  PeriodicThread thread;
  thread.Start(milliseconds(1), PeriodicThread::First::kAtOnce,
               [&](const std::stop_token&) {
                 ++ticks;
                 return true;
               });
  EXPECT_TRUE(Eventually([&] { return ticks >= 5; }));
  thread.Stop();
  const int after_stop = ticks;
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(ticks, after_stop) << "a tick ran after Stop returned";
}

TEST(PeriodicThreadTest, StopDoesNotWaitOutALongPeriod) {
  std::atomic<int> ticks{0};
  PeriodicThread thread;
  thread.Start(std::chrono::hours(1), PeriodicThread::First::kAfterOnePeriod,
               [&](const std::stop_token&) {
                 ++ticks;
                 return true;
               });
  const auto start = std::chrono::steady_clock::now();
  thread.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(ticks, 0);
}

TEST(PeriodicThreadTest, StopWaitsForTheTickInProgress) {
  std::atomic<bool> in_tick{false};
  std::atomic<bool> finished{false};
  PeriodicThread thread;
  thread.Start(std::chrono::hours(1), PeriodicThread::First::kAtOnce,
               [&](const std::stop_token&) {
                 in_tick = true;
                 std::this_thread::sleep_for(milliseconds(50));
                 finished = true;
                 return true;
               });
  ASSERT_TRUE(Eventually([&] { return in_tick.load(); }));
  thread.Stop();
  EXPECT_TRUE(finished) << "Stop returned while the tick still ran";
}

TEST(PeriodicThreadTest, ALongTickSeesTheStopRequest) {
  std::atomic<bool> in_tick{false};
  std::atomic<bool> saw_stop{false};
  PeriodicThread thread;
  thread.Start(milliseconds(1), PeriodicThread::First::kAtOnce,
               [&](const std::stop_token& stop) {
                 in_tick = true;
                 while (!stop.stop_requested()) {
                   std::this_thread::sleep_for(milliseconds(1));
                 }
                 saw_stop = true;
                 return true;
               });
  ASSERT_TRUE(Eventually([&] { return in_tick.load(); }));
  thread.Stop();
  EXPECT_TRUE(saw_stop);
}

TEST(PeriodicThreadTest, ATickThatReturnsFalseEndsTheThread) {
  std::atomic<int> ticks{0};
  PeriodicThread thread;
  thread.Start(milliseconds(1), PeriodicThread::First::kAtOnce,
               [&](const std::stop_token&) { return ++ticks < 3; });
  ASSERT_TRUE(Eventually([&] { return ticks >= 3; }));
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(ticks, 3);
  thread.Stop();
}

TEST(PeriodicThreadTest, WakeRunsTheNextTickNow) {
  std::atomic<int> ticks{0};
  PeriodicThread thread;
  thread.Start(std::chrono::hours(1), PeriodicThread::First::kAfterOnePeriod,
               [&](const std::stop_token&) {
                 ++ticks;
                 return true;
               });
  thread.Wake();
  EXPECT_TRUE(Eventually([&] { return ticks == 1; }));
  thread.Wake();
  EXPECT_TRUE(Eventually([&] { return ticks == 2; }));
}

TEST(PeriodicThreadTest, ANeverStartedThreadStops) {
  PeriodicThread thread;
  EXPECT_FALSE(thread.started());
  thread.Stop();
  thread.Stop();
}

}  // namespace
}  // namespace engram
