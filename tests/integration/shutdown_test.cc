// engramd stops cleanly (SIGTERM: exit 0) whatever is in flight when it is
// told to: a startup --load, a Load request, credential files being
// watched, a cluster's prober, a replica recovery, zero-copy readers' watch
// streams, idle client connections. scripts/test.sh runs this suite against
// an AddressSanitizer engramd too. The first was a use after free (the loader
// updated the health service after the gRPC server that owns it was gone:
// SIGSEGV in 9 of 12 SIGTERMs during a --load, 5 of 5 here before the
// fix); the others hold the rest of the stop order (EngramServer::Stop).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "transport/ucx_engine.h"

namespace engram {
namespace {

using testing::EngramdProcess;

constexpr int kRuns = 5;

class ShutdownTest : public ::testing::Test {
 protected:
  // 128 MiB: long enough to stop engramd mid-load.
  void SetUp() override {
    testing::WriteBigLayer(dir_.path(), "big", 1, 1 << 20);
    manifest_ = dir_.path() + "/big.json";
  }

  testing::TempDir dir_;
  std::string manifest_;
};

TEST_F(ShutdownTest, SigtermDuringAStartupLoadExitsCleanly) {
  for (int i = 0; i < kRuns; ++i) {
    auto server = EngramdProcess::Start({"--load=" + manifest_});
    ASSERT_TRUE(server.ok()) << server.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * i));
    EXPECT_EQ((*server)->Stop(), 0) << "run " << i << ":\n" << (*server)->Log();
  }
}

// A load capped by --load_max_mib_per_second (this one would take two
// minutes) waits in 50 ms slices: a stop does not wait for it.
TEST_F(ShutdownTest, SigtermDuringACappedLoadExitsPromptly) {
  auto server = EngramdProcess::Start(
      {"--load=" + manifest_, "--load_max_mib_per_second=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ((*server)->Stop(), 0) << (*server)->Log();
  EXPECT_LT(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count(),
      10.0);
}

TEST_F(ShutdownTest, SigtermDuringALoadRequestExitsCleanly) {
  for (int i = 0; i < kRuns; ++i) {
    auto server = EngramdProcess::Start({"--load_root=" + dir_.path()});
    ASSERT_TRUE(server.ok()) << server.status();
    std::thread load([&] {
      auto c = Client::Connect((*server)->address());
      if (c.ok()) (void)(*c)->Load("big.json");
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + 5 * i));
    EXPECT_EQ((*server)->Stop(), 0) << "run " << i << ":\n" << (*server)->Log();
    load.join();
  }
}

TEST_F(ShutdownTest, SigtermWithCredentialsWatchedAndAClusterProbingExits) {
  const std::string tokens = dir_.path() + "/tokens";
  testing::WriteText(tokens, "read r read-token-0123456789abcdef\n");
  const std::string cluster = dir_.path() + "/cluster";
  testing::WriteText(cluster, "cluster-secret-0123456789abcdef\n");
  for (int i = 0; i < 2; ++i) {
    ClientOptions reader;
    reader.token = "read-token-0123456789abcdef";
    auto shards = testing::StartCluster(
        3, 1,
        {"--tokens_file=" + tokens, "--cluster_token_file=" + cluster,
         "--credentials_reload_seconds=0.2", "--peer_read=gather"},
        reader);
    ASSERT_TRUE(shards.ok()) << shards.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (auto& shard : *shards) {
      EXPECT_EQ(shard->Stop(), 0) << shard->Log();
    }
  }
}

// A client that keeps its connection open and idle must not hold the stop:
// with nothing in flight engramd exits at once, not after the drain time
// (it used to take ~5 s longer: gRPC waited for the idle connection).
TEST_F(ShutdownTest, AnIdleClientConnectionDoesNotDelayTheStop) {
  auto server = EngramdProcess::Start({"--demo", "--drain_seconds=20"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect((*server)->address());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->ListLayers().ok());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ((*server)->Stop(), 0) << (*server)->Log();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  EXPECT_LT(seconds, 3.0) << (*server)->Log();
}

// ...while a call in flight when the stop begins still gets the drain: a
// Populate stream told of the SIGTERM half way through commits, and the
// stop waits for it.
TEST_F(ShutdownTest, ACallInFlightAtTheStopStillFinishes) {
  auto server = EngramdProcess::Start({"--drain_seconds=20"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect((*server)->address());
  ASSERT_TRUE(client.ok()) << client.status();
  const LayerLayout layout{{1 << 16, 1 << 16}, 256};  // 128 MiB
  const auto tables = testing::RandomTables(layout, 7);
  bool signalled = false;
  std::thread stop;
  int exit_code = -2;
  auto populated = (*client)->Populate(
      3, layout, testing::Spans(tables), [&](uint64_t sent, uint64_t total) {
        if (!signalled && sent > total / 2) {
          signalled = true;
          stop = std::thread([&] { exit_code = (*server)->Stop(); });
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
        }
      });
  ASSERT_TRUE(signalled);
  stop.join();
  EXPECT_TRUE(populated.ok()) << populated.status() << (*server)->Log();
  EXPECT_EQ(exit_code, 0) << (*server)->Log();
}

// Zero-copy readers hold WatchLayer streams that never end by themselves:
// the stop ends them instead of waiting the drain out.
TEST_F(ShutdownTest, SigtermWithWatchStreamsOpenExitsPromptly) {
  auto server = EngramdProcess::Start({"--direct_reads", "--drain_seconds=20"});
  if (!server.ok() && !transport::UcxCompiledIn()) {
    GTEST_SKIP() << "built without UCX";
  }
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.direct_reads = true;
  auto client = Client::Connect((*server)->address(), options);
  ASSERT_TRUE(client.ok()) << client.status();
  const LayerLayout layout{{2000, 7}, 16, DType::kFloat32};
  const auto tables = testing::RandomTables(layout, 3);
  ASSERT_TRUE((*client)->Populate(5, layout, testing::Spans(tables)).ok());
  std::vector<uint8_t> out(4 * 2 * layout.row_bytes());
  const int64_t shape[] = {4, 1, 2};
  for (int i = 0; i < 10; ++i) {  // the first lookups set the mapping up
    const auto ids = testing::RandomIds(layout, 4, 1, i);
    ASSERT_TRUE((*client)->Lookup(5, ids, shape, out).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ((*server)->Stop(), 0) << (*server)->Log();
  EXPECT_LT(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count(),
      3.0);
}

// A shard restarted empty copies its rows back from replicas on its own
// thread; a SIGTERM in the middle of that stops it cleanly.
TEST_F(ShutdownTest, SigtermDuringReplicaRecoveryExitsCleanly) {
  auto shards = testing::StartCluster(3, 2, {"--peer_read=gather"});
  ASSERT_TRUE(shards.ok()) << shards.status();
  auto client = Client::Connect((*shards)[0]->address());
  ASSERT_TRUE(client.ok()) << client.status();
  const LayerLayout layout{{1 << 15, 1 << 15}, 256};  // 64 MiB
  const auto tables = testing::RandomTables(layout, 9);
  ASSERT_TRUE((*client)->Populate(1, layout, testing::Spans(tables)).ok());
  for (int i = 0; i < 3; ++i) {
    (*shards)[1]->Kill();
    auto restarted = EngramdProcess::Start((*shards)[1]->flags());
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    (*shards)[1] = *std::move(restarted);
    std::this_thread::sleep_for(std::chrono::milliseconds(20 * i));
    EXPECT_EQ((*shards)[1]->Stop(), 0) << "run " << i << ":\n"
                                       << (*shards)[1]->Log();
  }
  for (auto& shard : *shards) {
    if (shard->Alive()) {
      EXPECT_EQ(shard->Stop(), 0) << shard->Log();
    }
  }
}

}  // namespace
}  // namespace engram
