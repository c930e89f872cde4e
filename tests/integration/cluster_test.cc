// Failure behaviour of a 3-shard cluster of real engramd processes.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "client/client.h"
#include "cluster/placement.h"
#include "engram/v1/engram.grpc.pb.h"
#include "tests/testing/cluster_fixture.h"
#include "transport/ucx_engine.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using ::testing::HasSubstr;

// Every case runs with each peer-read path (ctest runs the rma cases with
// UCX over shared memory and over TCP).
class ClusterTest : public testing::ClusterFixture {
 protected:
  void Start(int replication, std::vector<std::string> flags = {}) {
    flags.push_back("--staged_timeout_seconds=5");
    StartShards(3, replication, std::move(flags));
  }

  // engram_peer_reads_total{path} of a shard started with /metrics on.
  double PeerReads(int shard, const std::string& path) {
    auto metrics = testing::HttpGet(shards_[shard]->metrics_port(), "/metrics");
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    if (!metrics.ok()) return -1;
    const std::string key = "engram_peer_reads_total{path=\"" + path + "\"} ";
    const size_t at = metrics->find(key);
    EXPECT_NE(at, std::string::npos) << *metrics;
    return at == std::string::npos
               ? -1
               : std::stod(metrics->substr(at + key.size()));
  }
};

TEST_P(ClusterTest, ReplicatedClusterSurvivesKillDashNineDuringLookups) {
  Start(2);
  Populate(*clients_[0], 1, {{3000, 7, 1, 2000}, 32, DType::kFloat32});
  Populate(*clients_[1], 2, {{500, 501}, 24, DType::kBFloat16});
  testing::BackgroundReader reader(
      [&](uint32_t i) { return LookupExact(*clients_[0], 1 + i % 2, i); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  shards_[2]->Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  reader.Stop();
  EXPECT_EQ(reader.failed(), 0) << reader.first_error();
  EXPECT_GT(reader.ok(), 10);
  // Every row still has a live owner: the survivors stay SERVING.
  EXPECT_TRUE(clients_[1]->CheckHealth().ok());
  for (uint32_t i = 0; i < 20; ++i)
    ASSERT_TRUE(LookupExact(*clients_[1], 2, 1000 + i).ok());
}

TEST_P(ClusterTest, ClientRoutedLookupsAreExactAndFailOver) {
  Start(2);
  Populate(*clients_[0], 3, {{4000, 3, 2500}, 40, DType::kBFloat16});
  const std::vector<std::string> addresses = Addresses();
  auto routed = Client::ConnectCluster(addresses, 2);
  ASSERT_TRUE(routed.ok()) << routed.status();
  const LayerLayout& l = layouts_[3];
  const int64_t shape[] = {6, 5, 3};
  auto check = [&](uint32_t seed) {
    auto ids = testing::RandomIds(l, 6, 5, seed);
    for (DType out : {DType::kBFloat16, DType::kFloat32}) {
      auto want = testing::ReferenceGather(l, tables_[3], ids, out);
      std::vector<uint8_t> got(want.size(), 0x77), async_got(want.size(), 0x77);
      ASSERT_TRUE((*routed)->Lookup(3, ids, shape, got, out).ok());
      ASSERT_TRUE(
          (*routed)->LookupAsync(3, ids, shape, async_got, out).get().ok());
      EXPECT_EQ(got, want);
      EXPECT_EQ(async_got, want);
    }
  };
  for (uint32_t i = 0; i < 5; ++i) check(i);
  // A routed Populate reaches every owner directly; any shard serves it.
  LayerLayout direct{{700, 1, 900}, 12, DType::kFloat16};
  tables_[4] = testing::RandomTables(direct, 4);
  layouts_[4] = direct;
  auto info = (*routed)->Populate(4, direct, testing::Spans(tables_[4]));
  ASSERT_TRUE(info.ok()) << info.status();
  for (auto& c : clients_) ASSERT_TRUE(LookupExact(*c, 4, 7).ok());
  EXPECT_EQ((*routed)
                ->Populate(4, direct, testing::Spans(tables_[4]))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  // The client validates like the server.
  std::vector<int64_t> bad(90, 0);
  bad[4] = 3;  // head 1 has 3 rows
  std::vector<uint8_t> out(90 * 40 * 2);
  absl::Status s = (*routed)->Lookup(3, bad, shape, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("row_ids[0, 1, 1] = 3"));
  shards_[1]->Kill();
  for (uint32_t i = 10; i < 20; ++i) check(i);  // replicas answer
}

TEST_P(ClusterTest, UnreplicatedClusterNamesTheDeadShardAndServesTheRest) {
  Start(1);
  Populate(*clients_[0], 7, {{3000, 2000}, 16, DType::kFloat32});
  // A single-row, single-head layer lives on one shard: pick one not killed.
  auto placement = *Placement::Create(3, 1);
  int64_t tiny = 100;
  while (placement.OwnersOfRow(tiny, 0, 1, 0)[0] == 2) ++tiny;
  Populate(*clients_[0], tiny, {{1}, 8, DType::kFloat32});
  for (uint32_t i = 0; i < 3; ++i)
    ASSERT_TRUE(LookupExact(*clients_[0], 7, i).ok());
  shards_[2]->Kill();
  // Ranges of shard 2 have no owner: health turns NOT_SERVING once the
  // prober sees it (a lookup may notice first).
  absl::Status health;
  for (int i = 0; i < 60; ++i) {
    health = clients_[0]->CheckHealth();
    if (!health.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health.code(), absl::StatusCode::kUnavailable);
  // A shard marked down is not read, even where its memory is still mapped
  // here (rma over shared memory).
  absl::Status s = LookupExact(*clients_[0], 7, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard 2"));
  for (uint32_t i = 0; i < 5; ++i) {
    EXPECT_TRUE(LookupExact(*clients_[1], tiny, i).ok())
        << "rows living elsewhere";
  }
  // Liveness stays SERVING: a dead peer must not get healthy shards restarted.
  EXPECT_TRUE(clients_[0]->CheckHealth("engram.liveness").ok());
}

TEST_P(ClusterTest, KillingAShardMidPopulateLeavesTheLayerNowhere) {
  Start(1);
  auto stub = v1::EngramStore::NewStub(grpc::CreateChannel(
      shards_[0]->address(), grpc::InsecureChannelCredentials()));
  LayerLayout layout{{6000, 6000}, 16, DType::kFloat32};
  auto tables = testing::RandomTables(layout, 3);
  {
    grpc::ClientContext context;
    v1::PopulateResponse response;
    auto writer = stub->Populate(&context, &response);
    v1::PopulateRequest header;
    header.mutable_header()->set_layer_id(9);
    for (int64_t n : layout.table_vocab_sizes)
      header.mutable_header()->mutable_config()->add_table_vocab_sizes(n);
    header.mutable_header()->mutable_config()->set_embedding_dim(16);
    ASSERT_TRUE(writer->Write(header));
    const size_t row = 64;
    for (int64_t r = 0; r < 6000; r += 500) {
      if (r == 3000) shards_[1]->Kill();
      v1::PopulateRequest chunk;
      chunk.mutable_chunk()->set_head(0);
      chunk.mutable_chunk()->set_row_offset(r);
      chunk.mutable_chunk()->set_data(tables[0].data() + r * row, 500 * row);
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(s.error_message(), HasSubstr("shard 1"));
  }
  for (int i : {0, 2}) {
    EXPECT_EQ(clients_[i]->DescribeLayer(9).status().code(),
              absl::StatusCode::kNotFound);
  }
  // Bring shard 1 back on its address; the id can be populated again.
  std::string peers;
  for (auto& s : shards_) peers += (peers.empty() ? "" : ",") + s->address();
  auto back = EngramdProcess::Start({"--listen=" + shards_[1]->address(),
                                     "--peers=" + peers, "--shard_index=1",
                                     "--replication=1"});
  ASSERT_TRUE(back.ok()) << back.status();
  const std::string address = shards_[1]->address();
  shards_[1] = *std::move(back);
  for (auto& s : shards_)
    ASSERT_TRUE(testing::WaitServing(s->address(), 30).ok());
  tables_[9] = tables;
  layouts_[9] = layout;
  auto info = clients_[0]->Populate(9, layout, testing::Spans(tables));
  ASSERT_TRUE(info.ok()) << info.status();
  for (uint32_t i = 0; i < 5; ++i)
    EXPECT_TRUE(LookupExact(*clients_[2], 9, i).ok());
}

// The configured path is the one taken (metrics of the coordinating shard),
// and a layer removed and populated again under the same id is read from
// its new memory: cached remote keys of the old one are never used.
TEST_P(ClusterTest, PeerReadPathIsTheConfiguredOneAndSurvivesRepopulate) {
  Start(1, {"--metrics_listen=127.0.0.1:0"});
  const LayerLayout layout{{5000, 3000, 7000}, 24, DType::kBFloat16};
  for (int round = 0; round < 3; ++round) {
    tables_[9] = testing::RandomTables(layout, 100 + round);
    layouts_[9] = layout;
    ASSERT_TRUE(clients_[round % 3]
                    ->Populate(9, layout, testing::Spans(tables_[9]))
                    .ok());
    for (uint32_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(LookupExact(*clients_[0], 9, 10 * round + i).ok())
          << "round " << round;
    }
    ASSERT_TRUE(clients_[1]->Remove(9).ok());
  }
  const std::string used = GetParam();
  const std::string other = used == "rma" ? "gather" : "rma";
  EXPECT_GT(PeerReads(0, used), 0);
  EXPECT_EQ(PeerReads(0, other), 0);
}

// --peer_read=auto reads over rma where UCX reads natively (shared memory
// here) and over gather where UCX would emulate reads (UCX_TLS=tcp). Runs
// in the rma instance, which ctest runs with both.
TEST_P(ClusterTest, AutoPicksRmaOnlyWhereUcxReadsNatively) {
  if (GetParam() != "rma" || !transport::UcxCompiledIn()) {
    GTEST_SKIP() << "runs once, in the rma instance, with UCX";
  }
  Start(1, {"--metrics_listen=127.0.0.1:0", "--peer_read=auto"});
  Populate(*clients_[1], 11, {{4000, 900, 6000}, 32, DType::kFloat32});
  for (uint32_t i = 0; i < 6; ++i)
    ASSERT_TRUE(LookupExact(*clients_[0], 11, i).ok());
  const char* tls = std::getenv("UCX_TLS");
  const bool tcp_only = tls != nullptr && std::string(tls) == "tcp";
  EXPECT_GT(PeerReads(0, tcp_only ? "gather" : "rma"), 0);
  EXPECT_EQ(PeerReads(0, tcp_only ? "rma" : "gather"), 0);
}

// Direct reads: a client on the shards' host copies rows straight out of
// their exported memory. With every shard frozen (SIGSTOP) lookups still
// succeed, so no RPC is involved; a layer removed and populated again under
// the same id is read from its new memory. Shards that export nothing
// (--peer_read=gather) are simply asked over RPCs.
TEST_P(ClusterTest, DirectReadsServeFromShardMemoryWithoutRpcs) {
  Start(1);
  const LayerLayout l{{3000, 2, 5000}, 16, DType::kFloat32};
  Populate(*clients_[0], 5, l);
  const std::vector<std::string> addresses = Addresses();
  ClientOptions options;
  options.direct_reads = true;
  options.timeout = absl::Seconds(3);
  auto direct = Client::ConnectCluster(addresses, 1, options);
  ASSERT_TRUE(direct.ok()) << direct.status();
  // The first lookups go over RPCs while the mappings are set up.
  for (uint32_t i = 0; i < 20; ++i) {
    ASSERT_TRUE(LookupExact(**direct, 5, i).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (GetParam() == "gather" || !transport::UcxCompiledIn()) return;
  // Direct reads need UCX's shared-memory transports (mapped memory).
  if (const char* tls = std::getenv("UCX_TLS");
      tls != nullptr && !absl::StrContains(tls, "sm") &&
      !absl::StrContains(tls, "sysv") && !absl::StrContains(tls, "posix") &&
      !absl::StrContains(tls, "all")) {
    return;
  }

  for (auto& s : shards_) ASSERT_EQ(kill(s->pid(), SIGSTOP), 0);
  for (uint32_t i = 100; i < 120; ++i) {
    absl::Status s = LookupExact(**direct, 5, i);
    EXPECT_TRUE(s.ok()) << "frozen shards, lookup " << i << ": " << s;
  }
  {  // with a dtype conversion on the client
    auto ids = testing::RandomIds(l, 4, 3, 7);
    auto want = testing::ReferenceGather(l, tables_[5], ids, DType::kFloat16);
    std::vector<uint8_t> got(want.size());
    const int64_t shape[] = {4, 3, l.num_heads()};
    EXPECT_TRUE((*direct)->Lookup(5, ids, shape, got, DType::kFloat16).ok());
    EXPECT_EQ(got, want);
  }
  for (auto& s : shards_) ASSERT_EQ(kill(s->pid(), SIGCONT), 0);

  ASSERT_TRUE(clients_[1]->Remove(5).ok());
  tables_[5] = testing::RandomTables(l, 55);
  ASSERT_TRUE(clients_[2]->Populate(5, l, testing::Spans(tables_[5])).ok());
  for (uint32_t i = 200; i < 230; ++i) {
    absl::Status s = LookupExact(**direct, 5, i);
    EXPECT_TRUE(s.ok()) << "after repopulate, lookup " << i << ": " << s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

INSTANTIATE_TEST_SUITE_P(PeerRead, ClusterTest,
                         ::testing::Values("gather", "rma"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace engram
