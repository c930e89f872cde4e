// PopulateFanout driven directly against three real engramd shards (R = 2)
// through their peer API: the two phases, chunk validation, what an abort
// or an abandoned fan-out leaves (nothing), and a shard lost between the
// phases (the layer nowhere, the shard reported).
#include "cluster/populate_fanout.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "client/client.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

class PopulateFanoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto shards = testing::StartCluster(3, 2);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = *std::move(shards);
    for (auto& s : shards_) {
      stubs_.push_back(internal::v1::EngramPeer::NewStub(grpc::CreateChannel(
          s->address(), grpc::InsecureChannelCredentials())));
      auto c = Client::Connect(s->address());
      ASSERT_TRUE(c.ok());
      clients_.push_back(*std::move(c));
    }
  }
  std::unique_ptr<PopulateFanout> Fanout() {
    std::vector<internal::v1::EngramPeer::Stub*> stubs;
    for (auto& s : stubs_) stubs.push_back(s.get());
    return std::make_unique<PopulateFanout>(
        stubs, *Placement::Create(3, 2),
        [this](int shard) { unreachable_.push_back(shard); });
  }
  // Sends every head of `tables` in chunks of `rows_per_chunk` rows.
  absl::Status SendAll(PopulateFanout& f, const LayerLayout& layout,
                       const std::vector<std::vector<uint8_t>>& tables,
                       int64_t rows_per_chunk) {
    for (int h = 0; h < layout.num_heads(); ++h) {
      const int64_t rows = layout.table_vocab_sizes[h];
      for (int64_t r = 0; r < rows; r += rows_per_chunk) {
        const int64_t n = std::min(rows_per_chunk, rows - r);
        std::string_view chunk(reinterpret_cast<const char*>(tables[h].data()) +
                                   r * layout.row_bytes(),
                               n * layout.row_bytes());
        if (absl::Status s = f.AddChunk(h, r, chunk); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }
  // NOT_FOUND on every live shard.
  void ExpectNowhere(int64_t id) {
    for (size_t s = 0; s < shards_.size(); ++s) {
      if (!shards_[s]->Alive()) continue;
      EXPECT_EQ(clients_[s]->DescribeLayer(id).status().code(),
                absl::StatusCode::kNotFound)
          << "shard " << s;
    }
  }

  std::vector<std::unique_ptr<testing::EngramdProcess>> shards_;
  std::vector<std::unique_ptr<internal::v1::EngramPeer::Stub>> stubs_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<int> unreachable_;
};

TEST_F(PopulateFanoutTest, BothPhasesMakeTheLayerExactOnEveryShard) {
  const LayerLayout layout{{700, 13, 1201}, 24, DType::kBFloat16};
  auto tables = testing::RandomTables(layout, 3);
  auto f = Fanout();
  ASSERT_TRUE(f->Begin(7, layout).ok());
  EXPECT_FALSE(f->txn_id().empty());
  ASSERT_TRUE(SendAll(*f, layout, tables, 97).ok());
  ASSERT_TRUE(f->Commit().ok());
  for (size_t s = 0; s < shards_.size(); ++s) {
    for (uint32_t i = 0; i < 3; ++i) {
      absl::Status ok =
          testing::LookupExact(*clients_[s], 7, layout, tables, 4, 5, i);
      EXPECT_TRUE(ok.ok()) << "shard " << s << ": " << ok;
    }
  }
  // The id is taken now: a second fan-out of it is refused at Begin or at
  // the commit, and leaves the first one's rows.
  auto again = Fanout();
  absl::Status second = again->Begin(7, layout);
  if (second.ok()) second = SendAll(*again, layout, tables, 500);
  if (second.ok()) second = again->Commit();
  EXPECT_EQ(second.code(), absl::StatusCode::kAlreadyExists) << second;
  EXPECT_TRUE(
      testing::LookupExact(*clients_[0], 7, layout, tables, 4, 5, 9).ok());
  EXPECT_TRUE(unreachable_.empty());
}

TEST_F(PopulateFanoutTest, BadChunksAreRefusedAndAbortLeavesNothing) {
  const LayerLayout layout{{100, 50}, 8, DType::kFloat32};
  auto f = Fanout();
  ASSERT_TRUE(f->Begin(8, layout).ok());
  const std::string row(layout.row_bytes(), '\1');
  absl::Status s = f->AddChunk(0, 0, std::string_view(row).substr(0, 5));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = f->AddChunk(2, 0, row);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = f->AddChunk(1, 50, row);  // head 1 has rows 0..49
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  f->Abort();
  ExpectNowhere(8);
  // The id is free again at once: nothing staged is left holding it.
  auto tables = testing::RandomTables(layout, 8);
  auto g = Fanout();
  ASSERT_TRUE(g->Begin(8, layout).ok());
  ASSERT_TRUE(SendAll(*g, layout, tables, 64).ok());
  ASSERT_TRUE(g->Commit().ok());
  EXPECT_TRUE(
      testing::LookupExact(*clients_[2], 8, layout, tables, 2, 3, 1).ok());
}

TEST_F(PopulateFanoutTest, AnAbandonedFanoutIsAbortedByItsDestructor) {
  const LayerLayout layout{{300}, 16, DType::kFloat16};
  auto tables = testing::RandomTables(layout, 4);
  {
    auto f = Fanout();
    ASSERT_TRUE(f->Begin(9, layout).ok());
    ASSERT_TRUE(SendAll(*f, layout, tables, 100).ok());
  }  // neither Commit nor Abort
  ExpectNowhere(9);
  auto g = Fanout();
  ASSERT_TRUE(g->Begin(9, layout).ok());
  ASSERT_TRUE(SendAll(*g, layout, tables, 300).ok());
  EXPECT_TRUE(g->Commit().ok());
}

TEST_F(PopulateFanoutTest, AShardLostBeforeTheCommitLeavesTheLayerNowhere) {
  const LayerLayout layout{{400, 400}, 8, DType::kFloat32};
  auto tables = testing::RandomTables(layout, 5);
  auto f = Fanout();
  ASSERT_TRUE(f->Begin(10, layout).ok());
  ASSERT_TRUE(SendAll(*f, layout, tables, 128).ok());
  shards_[1]->Kill();
  absl::Status s = f->Commit();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard 1"));
  EXPECT_THAT(unreachable_, ::testing::Contains(1));
  ExpectNowhere(10);
  // Phase two alone (a cluster Load) cannot start without every shard.
  auto g = Fanout();
  absl::StatusOr<std::string> txn = g->BeginPrepared(11, false);
  EXPECT_EQ(txn.status().code(), absl::StatusCode::kUnavailable)
      << txn.status();
}

}  // namespace
}  // namespace engram
