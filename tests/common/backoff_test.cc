#include "common/backoff.h"

#include <gtest/gtest.h>

namespace engram {
namespace {

using std::chrono::milliseconds;

TEST(BackoffTest, GrowsToTheMaximumAndResets) {
  Backoff b({milliseconds(100), milliseconds(2000), 2});
  for (int expected : {100, 200, 400, 800, 1600, 2000, 2000}) {
    EXPECT_EQ(b.Next(), milliseconds(expected));
  }
  b.Reset();
  EXPECT_EQ(b.Next(), milliseconds(100));
}

TEST(BackoffTest, AFixedIntervalStaysFixed) {
  Backoff b({milliseconds(2000), milliseconds(2000), 2});
  EXPECT_EQ(b.Next(), milliseconds(2000));
  EXPECT_EQ(b.Next(), milliseconds(2000));
  Backoff slow({milliseconds(100), milliseconds(1000), 1.5});
  EXPECT_EQ(slow.Next(), milliseconds(100));
  EXPECT_EQ(slow.Next(), milliseconds(150));
  EXPECT_EQ(slow.Next(), milliseconds(225));
}

}  // namespace
}  // namespace engram
