// The Status RPC and engramctl status / top against real engramd processes
// (issue 25 item 7): readiness and why not, a load's progress while it
// runs, calls and errors per RPC, lookup latency, layers, process figures;
// a cluster shard reports its peers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using ::testing::HasSubstr;

TEST(StatusTest, ALoadInProgressIsNotReadyWithItsReasonAndItsBytes) {
  testing::TempDir dir;
  constexpr int64_t kRows = 1 << 19;  // 64 MiB of float32 [rows, 32]
  testing::WriteBigLayer(dir.path(), "big", 1, kRows);
  // Capped at 16 MiB/s the load's four 16 MiB steps take at least 3 s on
  // any machine (uncapped, a fast one loaded 256 MiB before the first
  // Status answered).
  const auto started = std::chrono::steady_clock::now();
  auto server = EngramdProcess::Start(
      {"--load=" + dir.path() + "/big.json", "--load_max_mib_per_second=16"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect((*server)->address());
  ASSERT_TRUE(client.ok());
  std::vector<ServerStatus> during;
  absl::StatusOr<ServerStatus> s;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    s = (*client)->GetStatus();
    ASSERT_TRUE(s.ok()) << s.status();
    if (s->ready) break;
    during.push_back(*s);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(s->ready) << s->not_ready_reason;
  EXPECT_GE(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started)
          .count(),
      3.0 - 0.01)
      << "the load was not held to --load_max_mib_per_second";
  ASSERT_FALSE(during.empty());
  const ServerStatus& loading = during.front();
  EXPECT_THAT(loading.not_ready_reason, HasSubstr("loading the start tables"));
  ASSERT_EQ(loading.loads.size(), 1u);
  EXPECT_THAT(loading.loads[0].manifest, HasSubstr("--load "));
  EXPECT_THAT(loading.loads[0].manifest, HasSubstr("big.json"));
  EXPECT_EQ(loading.loads[0].layers_total, 1);
  EXPECT_EQ(loading.loads[0].bytes_total, kRows * 128);
  int64_t last_done = 0;
  for (const ServerStatus& d : during) {
    if (d.loads.empty()) continue;  // between the rows and the commit
    EXPECT_GE(d.loads[0].bytes_done, last_done);
    EXPECT_LE(d.loads[0].bytes_done, d.loads[0].bytes_total);
    last_done = d.loads[0].bytes_done;
  }
  // Done: ready, nothing loading, the layer listed with its bytes.
  EXPECT_EQ(s->not_ready_reason, "");
  EXPECT_TRUE(s->loads.empty());
  ASSERT_EQ(s->layers.size(), 1u);
  EXPECT_EQ(s->layers[0].description.layer_id, 1);
  EXPECT_EQ(s->layers[0].description.bytes, kRows * 128);
  EXPECT_GE(s->memory_used_bytes, kRows * 128);
  EXPECT_GT(s->resident_bytes, kRows * 128 / 2);
}

TEST(StatusTest, CallsErrorsLatencyAndLayersAreCounted) {
  auto server = EngramdProcess::Start({"--demo"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto c = Client::Connect((*server)->address());
  ASSERT_TRUE(c.ok());
  std::vector<float> rows(4 * 8);
  std::span<uint8_t> out(reinterpret_cast<uint8_t*>(rows.data()),
                         rows.size() * sizeof(float));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE((*c)->Lookup(0, std::vector<int64_t>{1, 2, 3, 4},
                             std::vector<int64_t>{1, 1, 4}, out)
                    .ok());
  }
  EXPECT_FALSE((*c)->Lookup(0, std::vector<int64_t>{1, 2, 3, 99999},
                            std::vector<int64_t>{1, 1, 4}, out)
                   .ok());
  EXPECT_FALSE((*c)->DescribeLayer(42).ok());
  absl::StatusOr<ServerStatus> s = (*c)->GetStatus();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->ready);
  EXPECT_EQ(s->shards, 0);
  const ServerStatus::Calls* lookups = s->FindCalls("Lookup");
  ASSERT_NE(lookups, nullptr);
  EXPECT_EQ(lookups->calls, 6);
  EXPECT_EQ(lookups->errors, 1);
  const ServerStatus::Calls* describes = s->FindCalls("DescribeLayer");
  ASSERT_NE(describes, nullptr);
  EXPECT_EQ(describes->errors, 1);
  EXPECT_EQ(s->FindCalls("Remove"), nullptr);  // never called
  EXPECT_EQ(s->lookup_latency.count, 5);       // the served ones
  EXPECT_EQ(s->lookup_rows, 20);
  EXPECT_EQ(s->lookup_bytes, 5 * 4 * 8 * 4);
  const double p99 = LatencyQuantile(s->lookup_latency, 0.99);
  EXPECT_GT(p99, 0);
  EXPECT_LT(p99, 10);
  ASSERT_EQ(s->layers.size(), 1u);
  EXPECT_EQ(s->layers[0].description.layout.num_heads(), 4);
  EXPECT_EQ(s->layers[0].description.version, 1u);
  EXPECT_GT(s->open_fds, 3);
  EXPECT_GT(s->max_fds, s->open_fds);

  // engramctl status: one screen, rates over --interval_s.
  std::string out_text;
  const std::string ctl =
      testing::EngramctlPath() + " --address=" + (*server)->address() + " ";
  ASSERT_EQ(testing::RunCommand(ctl + "status --interval_s=0.2", &out_text), 0)
      << out_text;
  EXPECT_THAT(out_text, HasSubstr("ready:   yes"));
  EXPECT_THAT(out_text, HasSubstr("memory:  "));
  EXPECT_THAT(out_text, HasSubstr("lookups: 5 since start"));
  EXPECT_THAT(out_text, HasSubstr("last 0."));
  EXPECT_THAT(out_text, ::testing::ContainsRegex("Lookup +6 +1"));
  EXPECT_THAT(out_text, ::testing::ContainsRegex("\n0 +4 float32 +8 "));
  // top: as many screens as asked for.
  ASSERT_EQ(
      testing::RunCommand(ctl + "top --interval_s=0.1 --count=3", &out_text), 0)
      << out_text;
  size_t screens = 0;
  for (size_t p = out_text.find("ready:"); p != std::string::npos;
       p = out_text.find("ready:", p + 1)) {
    ++screens;
  }
  EXPECT_EQ(screens, 3u) << out_text;
}

TEST(StatusTest, AShardReportsItsClusterAndWhyItIsNotReady) {
  auto shards = testing::StartCluster(2, 1);
  ASSERT_TRUE(shards.ok()) << shards.status();
  auto c = Client::Connect((*shards)[0]->address());
  ASSERT_TRUE(c.ok());
  absl::StatusOr<ServerStatus> s = (*c)->GetStatus();
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->shards, 2);
  EXPECT_EQ(s->peers_up, 2);
  EXPECT_TRUE(s->ready) << s->not_ready_reason;
  const std::string both =
      absl::StrCat((*shards)[0]->address(), ",", (*shards)[1]->address());
  const std::string ctl = absl::StrCat(testing::EngramctlPath(),
                                       " --address=", both, " --timeout_s=3 ");
  std::string out;
  ASSERT_EQ(testing::RunCommand(ctl + "status --interval_s=0.2", &out), 0)
      << out;
  EXPECT_THAT(out, HasSubstr("cluster of 2 shards"));
  EXPECT_THAT(out, HasSubstr("2 of 2 ready"));
  EXPECT_THAT(
      out, ::testing::ContainsRegex("\n  1 +127\\.0\\.0\\.1:[0-9]+ +ready "));
  // Shard 1 gone: its row ranges (R = 1) have no owner.
  (*shards)[1]->Kill();
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    s = (*c)->GetStatus();
    ASSERT_TRUE(s.ok()) << s.status();
    if (!s->ready) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(s->ready);
  EXPECT_THAT(s->not_ready_reason,
              HasSubstr("no reachable owner: 1 of 2 shards answer"));
  // The cluster screen names the dead shard and why the other is not ready.
  EXPECT_EQ(testing::RunCommand(ctl + "status --interval_s=0", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("0 of 2 ready"));
  EXPECT_THAT(out, ::testing::ContainsRegex(
                       "\n  1 +127\\.0\\.0\\.1:[0-9]+ +UNREACHABLE"));
  EXPECT_THAT(out, HasSubstr("NOT READY  "));
  EXPECT_THAT(
      out, HasSubstr("ready:   NO - some row ranges have no reachable owner"));
}

}  // namespace
}  // namespace engram
