// engramd stops cleanly (SIGTERM: exit 0) whatever is in flight when it is
// told to: a startup --load, a Load request, credential files being
// watched, a cluster's prober. The first was a use after free (the loader
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

}  // namespace
}  // namespace engram
