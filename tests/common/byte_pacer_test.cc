#include "common/byte_pacer.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace engram {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(BytePacerTest, UnlimitedNeverWaits) {
  BytePacer pacer(0);
  std::atomic<bool> stop{false};
  const auto start = Clock::now();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(pacer.Wait(1 << 30, stop));
  EXPECT_LT(SecondsSince(start), 1.0);
  stop = true;
  EXPECT_FALSE(pacer.Wait(1, stop));
}

// Threads sharing a pacer together stay under its rate: 8 chunks of
// 100 KB at 2 MB/s, the first passing at once, take at least 0.35 s.
TEST(BytePacerTest, ThreadsSharingAPacerKeepItsAverageRate) {
  BytePacer pacer(2e6);
  std::atomic<bool> stop{false};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2; ++i) EXPECT_TRUE(pacer.Wait(100000, stop));
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_GE(SecondsSince(start), 0.35 - 0.005);
}

TEST(BytePacerTest, StopEndsAWaitPromptly) {
  BytePacer pacer(1000);  // 1 KB/s: a 1 MB chunk's slot is ~17 minutes
  std::atomic<bool> stop{false};
  ASSERT_TRUE(pacer.Wait(1 << 20, stop));  // passes at once, books the slot
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
  });
  const auto start = Clock::now();
  EXPECT_FALSE(pacer.Wait(1, stop));
  EXPECT_LT(SecondsSince(start), 5.0);
  stopper.join();
}

}  // namespace
}  // namespace engram
