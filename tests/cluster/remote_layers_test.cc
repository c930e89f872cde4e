// RemoteLayers, the cache of other processes' layers attached for one-sided
// reads, against a real engramd exporting its tables (--direct_reads) and
// this process's own UCX engine (shared memory): fetch, find, exact reads,
// staleness by version, forgetting, refused attachments remembered until
// their retry time, one fetch per key at a time, and many threads at once.
#include "cluster/remote_layers.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "client/client.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "transport/ucx_engine.h"

namespace engram {
namespace {

using Entry = std::shared_ptr<const RemoteLayers::Entry>;

class RemoteLayersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!transport::UcxCompiledIn()) GTEST_SKIP() << "built without UCX";
    auto server = testing::EngramdProcess::Start({"--direct_reads"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto c = Client::Connect(server_->address());
    ASSERT_TRUE(c.ok());
    client_ = *std::move(c);
    tables_ = testing::RandomTables(layout_, 3);
    ASSERT_TRUE(client_->Populate(4, layout_, testing::Spans(tables_)).ok());
    stub_ = internal::v1::EngramPeer::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
    auto engine = transport::UcxEngine::Create({.same_host_only = true});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }
  std::unique_ptr<RemoteLayers> Layers(bool accept = true) {
    RemoteLayers::Options options;
    options.accept = [accept](const transport::RemoteRegions& r) {
      return accept && r.mapped();
    };
    options.retry_after = std::chrono::milliseconds(300);
    return std::make_unique<RemoteLayers>(
        engine_.get(),
        std::vector<internal::v1::EngramPeer::Stub*>{stub_.get()}, options);
  }
  static absl::StatusOr<Entry> FetchNow(RemoteLayers& layers, int64_t id,
                                        std::shared_ptr<const void> version) {
    std::promise<absl::StatusOr<Entry>> got;
    layers.Fetch(0, id, 2, std::move(version), [&got](absl::StatusOr<Entry> e) {
      got.set_value(std::move(e));
    });
    return got.get_future().get();
  }
  // Reads rows (head, row) through `entry` and compares them with tables_.
  absl::Status ReadExact(RemoteLayers& layers, const Entry& entry,
                         const std::vector<std::pair<int, int64_t>>& rows) {
    std::vector<std::vector<uint8_t>> out(
        rows.size(), std::vector<uint8_t>(layout_.row_bytes()));
    std::vector<RemoteLayers::Row> ops;
    for (size_t i = 0; i < rows.size(); ++i)
      ops.push_back({rows[i].first, rows[i].second, out[i].data()});
    std::promise<absl::Status> done;
    layers.Read(0, 4, entry, layout_.row_bytes(), ops,
                std::chrono::steady_clock::now() + std::chrono::seconds(5),
                [&done](absl::Status s) { done.set_value(std::move(s)); });
    if (absl::Status s = done.get_future().get(); !s.ok()) return s;
    for (size_t i = 0; i < rows.size(); ++i) {
      const uint8_t* want =
          tables_[rows[i].first].data() + rows[i].second * layout_.row_bytes();
      if (!std::equal(out[i].begin(), out[i].end(), want)) {
        return absl::DataLossError("row differs");
      }
    }
    return absl::OkStatus();
  }

  const LayerLayout layout_{{500, 311}, 40, DType::kFloat32};
  std::vector<std::vector<uint8_t>> tables_;
  std::unique_ptr<testing::EngramdProcess> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<internal::v1::EngramPeer::Stub> stub_;
  std::unique_ptr<transport::UcxEngine> engine_;
};

TEST_F(RemoteLayersTest, FetchFindReadAndForget) {
  auto layers = Layers();
  EXPECT_EQ(layers->Find(0, 4, nullptr), nullptr);
  absl::StatusOr<Entry> fetched = FetchNow(*layers, 4, nullptr);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_NE((*fetched)->remote, nullptr) << "shared memory maps";
  Entry found = layers->Find(0, 4, nullptr);
  ASSERT_EQ(found, *fetched);
  EXPECT_TRUE(
      ReadExact(*layers, found, {{0, 0}, {1, 310}, {0, 499}, {1, 7}}).ok());
  layers->Forget(4);
  EXPECT_EQ(layers->Find(0, 4, nullptr), nullptr);
  // A layer the server does not have: an error, not remembered.
  absl::StatusOr<Entry> missing = FetchNow(*layers, 99, nullptr);
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(layers->Find(0, 99, nullptr), nullptr);
}

TEST_F(RemoteLayersTest, AnEntryIsStaleForAnotherVersionOfTheCallersCopy) {
  auto layers = Layers();
  auto mine = std::make_shared<int>(1);
  ASSERT_TRUE(FetchNow(*layers, 4, mine).ok());
  EXPECT_NE(layers->Find(0, 4, mine), nullptr);
  auto replaced = std::make_shared<int>(2);
  EXPECT_EQ(layers->Find(0, 4, replaced), nullptr);
  mine.reset();  // the copy it was fetched for is gone
  EXPECT_EQ(layers->Find(0, 4, replaced), nullptr);
}

TEST_F(RemoteLayersTest, ARefusedAttachmentMeansRpcUntilItsRetryTime) {
  auto layers = Layers(/*accept=*/false);
  absl::StatusOr<Entry> fetched = FetchNow(*layers, 4, nullptr);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ((*fetched)->remote, nullptr);
  Entry found = layers->Find(0, 4, nullptr);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->remote, nullptr) << "use an RPC";
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(layers->Find(0, 4, nullptr), nullptr) << "retry time passed";
}

TEST_F(RemoteLayersTest, ManyThreadsFetchFindReadAndForgetAtOnce) {
  auto layers = Layers();
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        Entry e = layers->Find(0, 4, nullptr);
        if (e == nullptr) {
          // Only one fetch per key runs; the others are told so at once.
          layers->Fetch(0, 4, 2, nullptr, nullptr);
          std::this_thread::yield();
          continue;
        }
        if (e->remote == nullptr) continue;
        absl::Status s =
            ReadExact(*layers, e, {{t % 2, (i * 37) % 311}, {1, i % 311}});
        s.ok() ? ++reads : ++wrong;
      }
    });
  }
  std::thread forgetter([&] {
    while (!stop) {
      layers->Forget(4);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& t : threads) t.join();
  forgetter.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(reads, 10);
}

}  // namespace
}  // namespace engram
