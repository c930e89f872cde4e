// WatchLayer and its client (client/layer_mapping.*) against a real engramd:
// the mapped tables are the layer's rows, every replace or remove reaches
// the watch, a replaced version stays mapped and exported (leased) until
// released, and a killed server is reported without harming the mapping.
#include "client/layer_mapping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <thread>

#include "client/client.h"
#include "common/mutex.h"
#include "hash/engram_hash.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/deepseek_demo.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

// Collects a watch's updates for the test thread.
class Updates {
 public:
  void Push(MappingUpdate u) {
    MutexLock lock(&mu_);
    updates_.push_back(std::move(u));
    cv_.notify_all();
  }
  // The next update, or nullopt after `seconds`.
  std::optional<MappingUpdate> Next(int seconds = 10) {
    MutexLock lock(&mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(seconds),
                      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                        return !updates_.empty();
                      })) {
      return std::nullopt;
    }
    MappingUpdate u = std::move(updates_.front());
    updates_.pop_front();
    return u;
  }

 private:
  Mutex mu_;
  std::condition_variable_any cv_;
  std::deque<MappingUpdate> updates_ ABSL_GUARDED_BY(mu_);
};

bool SameRows(const MappedVersion& v,
              const std::vector<std::vector<uint8_t>>& tables) {
  if (v.tables.size() != tables.size()) return false;
  for (size_t h = 0; h < tables.size(); ++h) {
    if (std::memcmp(v.tables[h], tables[h].data(), tables[h].size()) != 0)
      return false;
  }
  return true;
}

bool Exported(const MappedVersion& v) {
  for (size_t h = 0; h < v.epoch_slots.size(); ++h) {
    if (std::atomic_ref<uint64_t>(const_cast<uint64_t&>(*v.epoch_slots[h]))
            .load() != v.generations[h]) {
      return false;
    }
  }
  return true;
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

class LayerMappingTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> flags = {"--direct_reads"}) {
    auto server = testing::EngramdProcess::Start(flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  std::unique_ptr<LayerMappingWatch> Watch(int64_t layer, Updates* updates) {
    return std::make_unique<LayerMappingWatch>(
        Channel(server_->address()), layer, LayerMappingWatch::Options{},
        [updates](MappingUpdate u) { updates->Push(std::move(u)); });
  }

  // Populates `layer` with `tables`, starts watching it and returns the
  // first mapping (which must be present).
  std::shared_ptr<const MappedVersion> PopulateAndWatch(
      int64_t layer, const std::vector<std::vector<uint8_t>>& tables,
      Updates* updates, std::unique_ptr<LayerMappingWatch>* watch) {
    EXPECT_TRUE(client_->Populate(layer, layout_, testing::Spans(tables)).ok());
    *watch = Watch(layer, updates);
    std::optional<MappingUpdate> first = updates->Next();
    if (!first.has_value() || first->state != MappingUpdate::kPresent) {
      ADD_FAILURE() << "no mapping of layer " << layer;
      return nullptr;
    }
    return first->mapped;
  }

  LayerLayout layout_{{300, 200, 100}, 16, DType::kBFloat16};
  std::unique_ptr<testing::EngramdProcess> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(LayerMappingTest, MapsTheRowsAndFollowsReplaceAndRemove) {
  Start();
  auto v1 = testing::RandomTables(layout_, 1);
  Updates updates;
  std::unique_ptr<LayerMappingWatch> watch;
  std::shared_ptr<const MappedVersion> old =
      PopulateAndWatch(3, v1, &updates, &watch);
  ASSERT_NE(old, nullptr);
  ASSERT_TRUE(old->host_why.ok()) << old->host_why;
  EXPECT_EQ(old->version, 1u);
  EXPECT_EQ(old->layout.num_heads(), 3);
  EXPECT_TRUE(SameRows(*old, v1));
  EXPECT_TRUE(Exported(*old));
  EXPECT_FALSE(old->gpu_why.ok());  // not asked for, and no --gpu

  auto v2 = testing::RandomTables(layout_, 2);
  ASSERT_TRUE(client_->Replace(3, layout_, testing::Spans(v2)).ok());
  std::optional<MappingUpdate> second = updates.Next();
  ASSERT_TRUE(second.has_value());
  ASSERT_EQ(second->state, MappingUpdate::kPresent);
  EXPECT_EQ(second->mapped->version, 2u);
  EXPECT_TRUE(SameRows(*second->mapped, v2));
  // The old version is leased: still exported, rows unchanged.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(Exported(*old));
  EXPECT_TRUE(SameRows(*old, v1));
  // Released, the server frees it: its ranges are withdrawn (our mapping
  // still reads the old bytes; nothing else can change them).
  watch->Release(1);
  bool withdrawn = false;
  for (int i = 0; i < 100 && !withdrawn; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    withdrawn = !Exported(*old);
  }
  EXPECT_TRUE(withdrawn) << "the server kept a released version";
  EXPECT_TRUE(SameRows(*old, v1));

  ASSERT_TRUE(client_->Remove(3).ok());
  std::optional<MappingUpdate> removed = updates.Next();
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->state, MappingUpdate::kNotFound);
  // Version 2 is still leased, so still exported, after the remove.
  EXPECT_TRUE(Exported(*second->mapped));
  EXPECT_TRUE(SameRows(*second->mapped, v2));
  // A new layer under the id reaches the same watch.
  ASSERT_TRUE(client_->Populate(3, layout_, testing::Spans(v1)).ok());
  std::optional<MappingUpdate> again = updates.Next();
  ASSERT_TRUE(again.has_value());
  ASSERT_EQ(again->state, MappingUpdate::kPresent);
  EXPECT_EQ(again->mapped->version, 3u);
  EXPECT_TRUE(SameRows(*again->mapped, v1));
  // Ending the watch ends every lease, after a grace (the reader may still
  // be finishing launches over them when its stream breaks).
  watch.reset();
  ASSERT_TRUE(client_->Remove(3).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(Exported(*second->mapped) && Exported(*again->mapped))
      << "versions freed the moment their stream ended";
  bool freed = false;
  for (int i = 0; i < 200 && !freed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    freed = !Exported(*second->mapped) && !Exported(*again->mapped);
  }
  EXPECT_TRUE(freed) << "leases outlived their stream's grace";
}

TEST_F(LayerMappingTest, AMissingLayerAndAnUnexportedServerAreReported) {
  Start({"--metrics_listen=127.0.0.1:0"});  // no --direct_reads: no exports
  Updates updates;
  auto watch = Watch(9, &updates);
  std::optional<MappingUpdate> none = updates.Next();
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->state, MappingUpdate::kNotFound);
  auto tables = testing::RandomTables(layout_, 3);
  ASSERT_TRUE(client_->Populate(9, layout_, testing::Spans(tables)).ok());
  std::optional<MappingUpdate> present = updates.Next();
  ASSERT_TRUE(present.has_value());
  ASSERT_EQ(present->state, MappingUpdate::kPresent);
  EXPECT_EQ(present->mapped->host_why.code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(present->mapped->host_why.message(), HasSubstr("--direct_reads"));
  EXPECT_TRUE(present->mapped->tables.empty());
  // The server counts the stream and the version it leased to it.
  auto metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("engram_watch_streams 1"));
  EXPECT_THAT(*metrics, HasSubstr("engram_watch_leased_versions 1"));
}

TEST_F(LayerMappingTest, AKilledServerIsReportedAndTheMappingStaysReadable) {
  Start();
  auto tables = testing::RandomTables(layout_, 4);
  Updates updates;
  std::unique_ptr<LayerMappingWatch> watch;
  std::shared_ptr<const MappedVersion> first =
      PopulateAndWatch(5, tables, &updates, &watch);
  ASSERT_NE(first, nullptr);
  server_->Kill();
  std::optional<MappingUpdate> gone = updates.Next();
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->state, MappingUpdate::kUnavailable);
  EXPECT_THAT(gone->why.message(), HasSubstr("stream ended"));
  EXPECT_TRUE(SameRows(*first, tables));
  watch.reset();  // stops while reconnecting, without hanging
}

// Token lookups on the GPU read only versions whose ids mean what they
// hashed: every mapping says so. A load registers its model after the
// commit, so the version is sent again once it is (same version, one
// lease); a populate without a model makes the model stale.
TEST_F(LayerMappingTest, AVersionSaysWhatItsIdsMeanToTokenLookups) {
  testing::TempDir dir;
  absl::StatusOr<std::string> manifest = testing::WriteDeepSeekDemo(dir.path());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  absl::StatusOr<EngramHasher> hasher = EngramHasher::Load(
      dir.path() + "/config.json", dir.path() + "/token_map.npy");
  ASSERT_TRUE(hasher.ok()) << hasher.status();
  const uint64_t expected = hasher->TokenModel(1);
  Start({"--direct_reads", "--load_root=" + dir.path(),
         "--metrics_listen=127.0.0.1:0"});
  Updates updates;
  auto watch = Watch(1, &updates);
  std::optional<MappingUpdate> none = updates.Next();
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(none->state, MappingUpdate::kNotFound);
  ASSERT_TRUE(client_->Load("engram_manifest.json").ok());
  uint64_t version = 0;
  for (int i = 0; i < 3 && version == 0; ++i) {
    std::optional<MappingUpdate> u = updates.Next();
    ASSERT_TRUE(u.has_value()) << "the model never reached the watch";
    ASSERT_EQ(u->state, MappingUpdate::kPresent);
    if (u->mapped->token_model == expected) version = u->mapped->version;
  }
  ASSERT_NE(version, 0u);
  // Sent again or not, the version holds one lease.
  auto metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("engram_watch_leased_versions 1"));

  auto tables = testing::RandomTables(layout_, 5);
  ASSERT_TRUE(client_->Replace(1, layout_, testing::Spans(tables)).ok());
  std::optional<MappingUpdate> replaced = updates.Next();
  ASSERT_TRUE(replaced.has_value());
  ASSERT_EQ(replaced->state, MappingUpdate::kPresent);
  EXPECT_GT(replaced->mapped->version, version);
  EXPECT_EQ(replaced->mapped->token_model, kStaleTokenModel);
}

TEST_F(LayerMappingTest, BadWatchRequestsAreRefused) {
  Start();
  auto stub = internal::v1::EngramPeer::NewStub(Channel(server_->address()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->WatchLayer(&ctx);
  internal::v1::WatchLayerRequest bad;
  bad.set_layer_id(-4);
  ASSERT_TRUE(stream->Write(bad));
  internal::v1::LayerMapping ignored;
  EXPECT_FALSE(stream->Read(&ignored));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("negative"));
  ASSERT_TRUE(server_->Alive());
  EXPECT_TRUE(client_->CheckHealth().ok());
}

// A raw WatchLayer stream of `layer` that reads its first mapping.
struct RawWatch {
  grpc::ClientContext context;
  std::unique_ptr<internal::v1::EngramPeer::Stub> stub;
  std::unique_ptr<grpc::ClientReaderWriter<internal::v1::WatchLayerRequest,
                                           internal::v1::LayerMapping>>
      stream;
  internal::v1::LayerMapping first;
  bool Open(const std::string& address, int64_t layer) {
    stub = internal::v1::EngramPeer::NewStub(Channel(address));
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(60));
    stream = stub->WatchLayer(&context);
    internal::v1::WatchLayerRequest request;
    request.set_layer_id(layer);
    return stream->Write(request) && stream->Read(&first);
  }
};

// Issue: leases never expired on an open stream, so a reader that never
// released blocked replaces through the memory budget.
TEST_F(LayerMappingTest, AReaderThatNeverReleasesCannotBlockReplaces) {
  const LayerLayout big{{4096}, 256, DType::kFloat32};  // 4 MiB a version
  Start({"--direct_reads", "--watch_lease_seconds=1",
         "--memory_limit_bytes=14680064", "--metrics_listen=127.0.0.1:0"});
  auto tables = testing::RandomTables(big, 1);
  ASSERT_TRUE(client_->Populate(8, big, testing::Spans(tables)).ok());
  RawWatch hog;
  ASSERT_TRUE(hog.Open(server_->address(), 8));
  std::thread drain([&] {
    internal::v1::LayerMapping m;
    while (hog.stream->Read(&m)) {
    }  // reads every version, releases none
  });
  // Two replaces fit beside the leased versions; then the budget is full
  // until the lease runs out and the stream ends.
  absl::Status last;
  for (int i = 0; i < 8; ++i) {
    tables = testing::RandomTables(big, 10 + i);
    last = client_->Replace(8, big, testing::Spans(tables)).status();
    if (last.ok()) continue;
    EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  drain.join();
  grpc::Status ended = hog.stream->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << ended.error_message();
  EXPECT_THAT(ended.error_message(), HasSubstr("not released in time"));
  // Its versions are freed after the ended-stream grace; replaces go on.
  absl::Status replaced = absl::UnknownError("not tried");
  for (int i = 0; i < 30 && !replaced.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    replaced = client_->Replace(8, big, testing::Spans(tables)).status();
  }
  EXPECT_TRUE(replaced.ok()) << replaced;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(client_->Replace(8, big, testing::Spans(tables)).ok()) << i;
  }
}

// Issue: one caller could take all 1024 WatchLayer slots.
TEST_F(LayerMappingTest, OneCallerCannotTakeEveryWatchSlot) {
  Start({"--direct_reads", "--max_watch_streams_per_caller=2"});
  auto tables = testing::RandomTables(layout_, 1);
  ASSERT_TRUE(client_->Populate(9, layout_, testing::Spans(tables)).ok());
  auto first = std::make_unique<RawWatch>();
  RawWatch second, third;
  ASSERT_TRUE(first->Open(server_->address(), 9));
  ASSERT_TRUE(second.Open(server_->address(), 9));
  EXPECT_FALSE(third.Open(server_->address(), 9));
  grpc::Status refused = third.stream->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(),
              HasSubstr("--max_watch_streams_per_caller"));
  // A slot given back is free again.
  first->context.TryCancel();
  (void)first->stream->Finish();
  first.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  RawWatch fourth;
  EXPECT_TRUE(fourth.Open(server_->address(), 9));
}

}  // namespace
}  // namespace engram
