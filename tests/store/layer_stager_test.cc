// LayerStager: one populate's claim and staged rows, released exactly once.
#include "store/layer_stager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/random_layer.h"

namespace engram {
namespace {

class LayerStagerTest : public ::testing::Test {
 protected:
  std::unique_ptr<LayerStager> Begin(int64_t id,
                                     std::function<void()> on_abort = {}) {
    LayerStager::Options options;
    options.pin_memory = false;
    options.on_abort = std::move(on_abort);
    auto stager =
        LayerStager::Begin(&layers_, &budget_, id, layout_, std::move(options));
    EXPECT_TRUE(stager.ok()) << stager.status();
    return stager.ok() ? *std::move(stager) : nullptr;
  }
  absl::Status AddAll(LayerStager& s) {
    for (int h = 0; h < layout_.num_heads(); ++h) {
      const auto& t = tables_[h];
      if (absl::Status st = s.AddChunk(
              h, 0, {reinterpret_cast<const char*>(t.data()), t.size()});
          !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }

  LayerLayout layout_{{10, 3}, 4, DType::kFloat32};
  std::vector<std::vector<uint8_t>> tables_ = testing::RandomTables(layout_, 3);
  LayerRegistry layers_;
  MemoryBudget budget_{1 << 20};
};

TEST_F(LayerStagerTest, ClaimsTheIdAndGivesEverythingBackWhenDropped) {
  auto stager = Begin(7);
  ASSERT_NE(stager, nullptr);
  EXPECT_GT(budget_.used(), 0u);
  LayerStager::Options options;
  EXPECT_EQ(LayerStager::Begin(&layers_, &budget_, 7, layout_, options)
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  stager.reset();
  EXPECT_EQ(budget_.used(), 0u);
  EXPECT_NE(Begin(7), nullptr) << "the id is free again";
}

TEST_F(LayerStagerTest, ForcedRemoveRunsTheHookAndAbortsChunks) {
  int hooks = 0;
  auto stager = Begin(8, [&hooks] { ++hooks; });
  ASSERT_TRUE(layers_.Remove(8, /*force=*/true).ok());
  EXPECT_EQ(hooks, 1);
  EXPECT_TRUE(stager->aborted());
  EXPECT_EQ(AddAll(*stager).code(), absl::StatusCode::kAborted);
}

TEST_F(LayerStagerTest, FinishDetachesTheHookAndTheClaimCanBeCommitted) {
  int hooks = 0;
  auto stager = Begin(9, [&hooks] { ++hooks; });
  ASSERT_TRUE(AddAll(*stager).ok());
  auto layer = stager->Finish();
  ASSERT_TRUE(layer.ok()) << layer.status();
  std::shared_ptr<PopulateTicket> ticket = stager->TakeTicket();
  stager.reset();  // the claim was taken over: nothing given back
  ASSERT_TRUE(layers_.Commit(ticket, *std::move(layer)).ok());
  EXPECT_NE(layers_.Find(9), nullptr);
  EXPECT_EQ(hooks, 0);
}

TEST_F(LayerStagerTest, AfterFinishAForcedRemoveOnlyMarksTheClaim) {
  int hooks = 0;
  auto stager = Begin(11, [&hooks] { ++hooks; });
  ASSERT_TRUE(AddAll(*stager).ok());
  auto layer = stager->Finish();
  ASSERT_TRUE(layer.ok());
  ASSERT_TRUE(layers_.Remove(11, /*force=*/true).ok());
  EXPECT_EQ(hooks, 0) << "the hook was detached at Finish";
  EXPECT_EQ(layers_.Commit(stager->ticket(), *std::move(layer)).code(),
            absl::StatusCode::kAborted);
  stager.reset();
  EXPECT_EQ(layers_.Find(11), nullptr);
  EXPECT_NE(Begin(11), nullptr);
}

TEST_F(LayerStagerTest, MissingRowsFailFinishAndReleaseOnDrop) {
  auto stager = Begin(10);
  ASSERT_TRUE(stager
                  ->AddChunk(0, 0,
                             {reinterpret_cast<const char*>(tables_[0].data()),
                              tables_[0].size()})
                  .ok());
  EXPECT_EQ(stager->Finish().status().code(),
            absl::StatusCode::kInvalidArgument);
  stager.reset();
  EXPECT_EQ(budget_.used(), 0u);
  EXPECT_EQ(layers_.Find(10), nullptr);
  EXPECT_NE(Begin(10), nullptr);
}

}  // namespace
}  // namespace engram
