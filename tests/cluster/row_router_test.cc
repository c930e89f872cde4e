// RowRouter with fake shards: every row lands where it belongs, failover
// follows the one rule (codes, marking down, replicas), partial failures
// are reported precisely.
#include "cluster/row_router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

// Row r of head h, element d: h * 1000 + r + d / 4 (float32).
float Value(int head, int64_t row, int d) {
  return static_cast<float>(head * 1000 + row) + static_cast<float>(d) / 4;
}

// A shard that answers from the formula above, or with a scripted status;
// answers synchronously or from another thread.
class FakeShards final : public ShardReader, public ShardStates {
 public:
  explicit FakeShards(int shards) : up_(shards, true) {}

  void Read(int shard, const ShardRead& read,
            std::function<void(absl::Status)> done) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_[shard]++;
    }
    auto answer = [this, shard, &read, done = std::move(done)] {
      absl::Status s = StatusOf(shard);
      if (s.ok()) {
        const int dim = read.layout().embedding_dim;
        std::vector<float> row(dim);
        for (size_t j = 0; j < read.size(); ++j) {
          for (int d = 0; d < dim; ++d)
            row[d] = Value(read.head(j), read.row(j), d);
          if (uint8_t* dst = read.dst(j); dst != nullptr && j % 2 == 0) {
            std::memcpy(dst, row.data(), dim * sizeof(float));  // direct
          } else {
            read.Put(j, reinterpret_cast<const uint8_t*>(row.data()));
          }
        }
      }
      done(s);
    };
    if (async_) {
      std::thread(std::move(answer)).detach();
    } else {
      answer();
    }
  }
  bool up(int shard) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return up_[shard];
  }
  void MarkDown(int shard) override {
    std::lock_guard<std::mutex> lock(mu_);
    up_[shard] = false;
    marked_down_.insert(shard);
  }
  std::string Name(int shard) const override {
    return absl::StrCat("shard ", shard);
  }

  void Script(int shard, absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    status_[shard] = std::move(s);
  }
  int calls(int shard) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[shard];
  }
  std::set<int> marked_down() {
    std::lock_guard<std::mutex> lock(mu_);
    return marked_down_;
  }
  bool async_ = false;

 private:
  absl::Status StatusOf(int shard) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = status_.find(shard);
    return it == status_.end() ? absl::OkStatus() : it->second;
  }
  mutable std::mutex mu_;
  std::vector<bool> up_;
  std::map<int, absl::Status> status_;
  std::map<int, int> calls_;
  std::set<int> marked_down_;
};

class RowRouterTest : public ::testing::TestWithParam<bool> {
 protected:
  static constexpr int kShards = 4;
  RowRouterTest() : shards_(std::make_shared<FakeShards>(kShards)) {
    shards_->async_ = GetParam();
  }

  // Reads ids through a router with replication `r`; returns the status
  // and fills `out` (float32 or bfloat16 when `convert`).
  absl::Status ReadAll(int r, bool convert, std::vector<uint8_t>* out,
                       int skip = -1) {
    placement_ = *Placement::Create(kShards, r);
    RowRouter router(&placement_, shards_.get(), [this] { ++failovers_; });
    const int64_t n = static_cast<int64_t>(ids_.size());
    const DType dtype = convert ? DType::kBFloat16 : DType::kFloat32;
    out->assign(n * layout_.embedding_dim * DTypeSize(dtype), 0xee);
    RowRouter::Lookup lookup;
    lookup.layer_id = 9;
    lookup.layout = &layout_;
    lookup.ids = ids_.data();
    for (int64_t i = 0; i < n; ++i) lookup.positions.push_back(i);
    lookup.out_dtype = dtype;
    lookup.out = out->data();
    lookup.reader = shards_;
    lookup.skip_shard = skip;
    std::promise<absl::Status> done;
    router.Read(std::move(lookup),
                [&done](absl::Status s) { done.set_value(std::move(s)); });
    return done.get_future().get();
  }

  void ExpectRowsExact(const std::vector<uint8_t>& out) {
    const int dim = layout_.embedding_dim;
    const float* got = reinterpret_cast<const float*>(out.data());
    for (size_t i = 0; i < ids_.size(); ++i) {
      const int h = static_cast<int>(i % layout_.num_heads());
      for (int d = 0; d < dim; ++d) {
        ASSERT_EQ(got[i * dim + d], Value(h, ids_[i], d)) << i << " " << d;
      }
    }
  }

  LayerLayout layout_{{100, 7, 3000}, 8, DType::kFloat32};
  // [B = 5, L = 2, H = 3] ids spread over every range.
  std::vector<int64_t> ids_ = {
      0,  6, 2999, 99, 1, 1500, 50, 3, 10,   12, 0, 777, 77, 5, 2000,
      25, 4, 2500, 60, 2, 1234, 33, 6, 2222, 88, 0, 100, 42, 1, 2998};
  Placement placement_ = *Placement::Create(kShards, 1);
  std::shared_ptr<FakeShards> shards_;
  std::atomic<int> failovers_{0};
};

TEST_P(RowRouterTest, EveryRowLandsInPlaceDirectOrConverted) {
  std::vector<uint8_t> out;
  ASSERT_TRUE(ReadAll(1, false, &out).ok());
  ExpectRowsExact(out);
  std::vector<uint8_t> bf16;
  ASSERT_TRUE(ReadAll(2, true, &bf16).ok());
  // Convert the reference the same way and compare bytes.
  std::vector<uint8_t> want(bf16.size());
  const int dim = layout_.embedding_dim;
  for (size_t i = 0; i < ids_.size(); ++i) {
    std::vector<float> row(dim);
    for (int d = 0; d < dim; ++d)
      row[d] = Value(static_cast<int>(i % 3), ids_[i], d);
    ConvertElements(row.data(), DType::kFloat32, want.data() + i * dim * 2,
                    DType::kBFloat16, dim);
  }
  EXPECT_EQ(bf16, want);
  EXPECT_EQ(failovers_.load(), 0);
  for (int s = 0; s < kShards; ++s) EXPECT_GT(shards_->calls(s), 0) << s;
}

TEST_P(RowRouterTest, UnavailableShardIsMarkedDownAndReplicasAnswer) {
  shards_->Script(1, absl::UnavailableError("connection refused"));
  std::vector<uint8_t> out;
  ASSERT_TRUE(ReadAll(2, false, &out).ok());
  ExpectRowsExact(out);
  EXPECT_THAT(shards_->marked_down(), ::testing::ElementsAre(1));
  EXPECT_GE(failovers_.load(), 1);
}

TEST_P(RowRouterTest, OtherErrorsFailOverWithoutMarkingDown) {
  shards_->Script(2, absl::InternalError("short reply"));
  std::vector<uint8_t> out;
  ASSERT_TRUE(ReadAll(3, false, &out).ok());
  ExpectRowsExact(out);
  EXPECT_TRUE(shards_->marked_down().empty());
}

TEST_P(RowRouterTest, NoReplicaLeftIsUnavailableNamingTheShard) {
  shards_->Script(3, absl::DeadlineExceededError("slow"));
  std::vector<uint8_t> out;
  absl::Status s = ReadAll(1, false, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard 3: slow"));
  EXPECT_THAT(shards_->marked_down(), ::testing::ElementsAre(3));
}

TEST_P(RowRouterTest, MissingLayerIsNotFoundAndNotRetried) {
  for (absl::Status missing :
       {absl::NotFoundError("layer 9 not found"),
        absl::FailedPreconditionError("does not hold row 5")}) {
    shards_ = std::make_shared<FakeShards>(kShards);
    shards_->async_ = GetParam();
    shards_->Script(0, missing);
    std::vector<uint8_t> out;
    absl::Status s = ReadAll(2, false, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("shard 0"));
    EXPECT_TRUE(shards_->marked_down().empty());
    EXPECT_EQ(failovers_.load(), 0);
  }
}

TEST_P(RowRouterTest, SkippedShardIsNeverAskedAndItsRowsComeFromReplicas) {
  std::vector<uint8_t> out;
  ASSERT_TRUE(ReadAll(2, false, &out, /*skip=*/2).ok());
  ExpectRowsExact(out);
  EXPECT_EQ(shards_->calls(2), 0);
  // With R = 1 its rows have no other owner: UNAVAILABLE naming it.
  absl::Status s = ReadAll(1, false, &out, /*skip=*/2);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("shard 2 lacks its rows"));
}

INSTANTIATE_TEST_SUITE_P(SyncAndAsync, RowRouterTest, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "async" : "sync";
                         });

}  // namespace
}  // namespace engram
