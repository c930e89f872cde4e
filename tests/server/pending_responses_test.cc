#include "server/pending_responses.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <thread>
#include <vector>

namespace engram {
namespace {

using ::testing::HasSubstr;

TEST(PendingResponsesTest, ChargesPerConnectionAndInAllUntilReleased) {
  PendingResponses pending(/*total_limit=*/1000, /*per_connection_limit=*/600);
  auto a = pending.Reserve("ipv4:127.0.0.1:1", 500);
  ASSERT_TRUE(a.ok()) << a.status();
  auto over = pending.Reserve("ipv4:127.0.0.1:1", 200);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(),
              HasSubstr("--max_pending_response_bytes_per_connection"));
  auto b = pending.Reserve("ipv4:127.0.0.1:2", 500);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(pending.total(), 1000);
  auto full = pending.Reserve("ipv4:127.0.0.1:3", 1);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(),
              HasSubstr("(--max_pending_response_bytes)"));
  // A refused reservation leaves nothing charged.
  EXPECT_EQ(pending.HeldBy("ipv4:127.0.0.1:3"), 0);
  EXPECT_EQ(pending.HeldBy("ipv4:127.0.0.1:1"), 500);

  a->reset();  // the response was sent
  EXPECT_EQ(pending.total(), 500);
  EXPECT_EQ(pending.HeldBy("ipv4:127.0.0.1:1"), 0);
  EXPECT_TRUE(pending.Reserve("ipv4:127.0.0.1:3", 500).ok());
}

TEST(PendingResponsesTest, AChargeLivesAsLongAsItsSlice) {
  PendingResponses pending(1000, 1000);
  auto charge = pending.Reserve("peer", 100);
  ASSERT_TRUE(charge.ok());
  bool destroyed = false;
  {
    grpc::Slice slice = PendingResponses::ChargedSlice(
        nullptr, 0, [](void* d) { *static_cast<bool*>(d) = true; }, &destroyed,
        *std::move(charge));
    EXPECT_EQ(pending.total(), 100);  // the slice holds the charge
  }
  EXPECT_TRUE(destroyed);
  EXPECT_EQ(pending.total(), 0);
}

// Many connections reserving and releasing at once: every byte comes back,
// and no connection ever holds more than its limit.
TEST(PendingResponsesTest, ConcurrentReservationsBalance) {
  PendingResponses pending(1 << 20, 4096);
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const std::string peer = "peer" + std::to_string(t % 4);
      std::deque<std::shared_ptr<PendingResponses::Charge>> held;
      for (int i = 0; i < 2000; ++i) {
        if (held.size() == 5) held.pop_front();  // a response was read
        auto c = pending.Reserve(peer, 1000 + i % 7);
        if (!c.ok()) {
          refused.fetch_add(1);
          continue;
        }
        held.push_back(*std::move(c));
        EXPECT_LE(pending.HeldBy(peer), 4096);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(refused.load(), 0);  // 5 held of ~1000 bytes pass 4096
  EXPECT_EQ(pending.total(), 0);
  for (int p = 0; p < 4; ++p) {
    EXPECT_EQ(pending.HeldBy("peer" + std::to_string(p)), 0);
  }
}

}  // namespace
}  // namespace engram
