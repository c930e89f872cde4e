// ClusterRouter (Client::ConnectCluster) shared by many threads while the
// cluster changes under it: routed lookups from four threads, routed
// populates and removes of another layer, a shard killed with SIGKILL.
// Every lookup must be exact, never a mix or an error (R = 2). Not run
// under ThreadSanitizer: Debian's gRPC is not TSan-built, and the ordering
// its completion queue gives is invisible to TSan, so gRPC's own inline
// code (call tags, statuses, byte buffers) reads as racing with itself.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "tests/testing/cluster_fixture.h"

namespace engram {
namespace {

class ClusterRouterTest : public testing::ClusterFixture {};

TEST_P(ClusterRouterTest, SharedByThreadsWhileLayersChangeAndAShardDies) {
  StartShards(3, 2, {"--staged_timeout_seconds=5"});
  Populate(*clients_[0], 1, {{2000, 7, 1500}, 16, DType::kFloat32});
  auto routed = Client::ConnectCluster(Addresses(), 2);
  ASSERT_TRUE(routed.ok()) << routed.status();
  Client& router = **routed;

  std::atomic<bool> stop{false};
  std::atomic<int> exact{0}, wrong{0};
  std::vector<std::string> errors(4);
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      for (uint32_t i = 0; !stop; ++i) {
        absl::Status s = testing::LookupExact(router, 1, layouts_[1],
                                              tables_[1], 4, 3, t * 100000 + i);
        if (s.ok()) {
          ++exact;
        } else {
          ++wrong;
          if (errors[t].empty()) errors[t] = s.ToString();
        }
      }
    });
  }
  // Another layer comes and goes through the same router meanwhile: its
  // cached layout is dropped and asked again each time.
  std::atomic<int> churned{0};
  std::string churn_error;
  std::thread churn([&] {
    const LayerLayout layout{{300, 301}, 8, DType::kBFloat16};
    auto tables = testing::RandomTables(layout, 9);
    while (!stop) {
      auto info = router.Populate(2, layout, testing::Spans(tables));
      if (!info.ok()) {
        if (churn_error.empty()) churn_error = info.status().ToString();
        continue;
      }
      absl::Status s =
          testing::LookupExact(router, 2, layout, tables, 2, 2, churned);
      if (!s.ok() && churn_error.empty()) churn_error = s.ToString();
      (void)clients_[0]->Remove(2);
      ++churned;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  shards_[2]->Kill();  // R = 2: every row still has a live owner
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (std::thread& t : readers) t.join();
  churn.join();

  EXPECT_EQ(wrong, 0) << errors[0] << errors[1] << errors[2] << errors[3];
  EXPECT_GT(exact, 20);
  EXPECT_GT(churned, 0) << churn_error;
}

INSTANTIATE_TEST_SUITE_P(PeerRead, ClusterRouterTest,
                         ::testing::Values(std::string("gather")));

}  // namespace
}  // namespace engram
