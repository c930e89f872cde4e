#include "store/layer_builder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

std::string_view Rows(const std::vector<uint8_t>& table, size_t row_bytes,
                      int64_t first, int64_t count) {
  return {reinterpret_cast<const char*>(table.data()) + first * row_bytes,
          static_cast<size_t>(count) * row_bytes};
}

class LayerBuilderTest : public ::testing::Test {
 protected:
  LayerLayout layout_{{10, 3}, 4, DType::kFloat32};
  MemoryBudget budget_{1 << 20};
  std::vector<std::vector<uint8_t>> tables_ = testing::RandomTables(layout_, 5);
  size_t row_ = layout_.row_bytes();
  const size_t page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  // Each head is its own page-rounded mapping; one bitmap word per head
  // while staging.
  size_t mapped_ = 2 * page_;
  size_t staged_ = mapped_ + 2 * sizeof(uint64_t);

  std::unique_ptr<LayerBuilder> NewBuilder() {
    auto b = LayerBuilder::Create(4, layout_, &budget_, false);
    EXPECT_TRUE(b.ok()) << b.status();
    return *std::move(b);
  }
  void ExpectInvalid(const absl::Status& s, const std::string& fragment) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(fragment));
  }
};

TEST_F(LayerBuilderTest, ChunksInAnyOrderAndSizeBuildTheTables) {
  auto b = NewBuilder();
  EXPECT_EQ(budget_.used(), staged_) << "page-rounded tables plus bitmaps";
  ASSERT_TRUE(b->AddChunk(0, 7, Rows(tables_[0], row_, 7, 3)).ok());
  ASSERT_TRUE(b->AddChunk(1, 0, Rows(tables_[1], row_, 0, 3)).ok());
  ASSERT_TRUE(b->AddChunk(0, 0, Rows(tables_[0], row_, 0, 1)).ok());
  ASSERT_TRUE(b->AddChunk(0, 1, Rows(tables_[0], row_, 1, 6)).ok());
  auto layer = b->Finish();
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ(0, std::memcmp((*layer)->table(0), tables_[0].data(), 40 * 4));
  EXPECT_EQ(0, std::memcmp((*layer)->table(1), tables_[1].data(), 12 * 4));
  EXPECT_EQ((*layer)->bytes(), mapped_) << "staging released at Finish";
  EXPECT_EQ((*layer)->data_bytes(), layout_.total_bytes());
  EXPECT_TRUE((*layer)->complete());
  EXPECT_EQ(budget_.used(), mapped_);
  layer->reset();
  EXPECT_EQ(budget_.used(), 0u) << "dropping the layer frees its budget";
}

TEST_F(LayerBuilderTest, RejectsBadChunksWithoutWriting) {
  auto b = NewBuilder();
  ExpectInvalid(b->AddChunk(2, 0, Rows(tables_[0], row_, 0, 1)),
                "chunk head 2 is out of range: layer 4 has 2 heads");
  ExpectInvalid(b->AddChunk(-1, 0, Rows(tables_[0], row_, 0, 1)),
                "chunk head -1");
  ExpectInvalid(b->AddChunk(0, 0, Rows(tables_[0], row_, 0, 1).substr(0, 6)),
                "not a whole number of 16-byte rows");
  ExpectInvalid(b->AddChunk(0, 0, ""), "carries no rows");
  ExpectInvalid(b->AddChunk(0, 8, Rows(tables_[0], row_, 0, 3)),
                "rows [8, 11) outside the table's 10 rows");
  ExpectInvalid(b->AddChunk(0, -1, Rows(tables_[0], row_, 0, 1)),
                "outside the table");
  ASSERT_TRUE(b->AddChunk(0, 2, Rows(tables_[0], row_, 2, 3)).ok());
  ExpectInvalid(b->AddChunk(0, 4, Rows(tables_[0], row_, 4, 2)),
                "row 4 already arrived (overlap)");
  EXPECT_EQ(b->rows_received(), 3);
}

TEST_F(LayerBuilderTest, MissingRowsFailFinish) {
  auto b = NewBuilder();
  ASSERT_TRUE(b->AddChunk(0, 0, Rows(tables_[0], row_, 0, 10)).ok());
  ASSERT_TRUE(b->AddChunk(1, 0, Rows(tables_[1], row_, 0, 1)).ok());
  ASSERT_TRUE(b->AddChunk(1, 2, Rows(tables_[1], row_, 2, 1)).ok());
  auto layer = b->Finish();
  ExpectInvalid(layer.status(),
                "head 1 missing 1 of 3 rows (first missing row 1)");
}

TEST_F(LayerBuilderTest, BudgetIsEnforcedAndReleasedOnAbort) {
  MemoryBudget small(staged_ + 10);
  auto first = LayerBuilder::Create(1, layout_, &small, false);
  ASSERT_TRUE(first.ok());
  auto second = LayerBuilder::Create(2, layout_, &small, false);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("--memory_limit_bytes"));
  first->reset();  // abort the first populate
  EXPECT_EQ(small.used(), 0u);
  EXPECT_TRUE(LayerBuilder::Create(2, layout_, &small, false).ok());
}

TEST_F(LayerBuilderTest, ShardHoldsOnlyItsRanges) {
  // Head 0: rows [2, 5) and [8, 10); head 1: nothing.
  auto b =
      LayerBuilder::Create(4, layout_, &budget_, true, {{{2, 5}, {8, 10}}, {}});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(budget_.used(), page_ + 2 * sizeof(uint64_t))
      << "only pages of held rows are charged (head 1 holds none)";
  ExpectInvalid((*b)->AddChunk(0, 4, Rows(tables_[0], row_, 4, 2)),
                "rows [4, 6) that this shard does not hold");
  ExpectInvalid((*b)->AddChunk(1, 0, Rows(tables_[1], row_, 0, 1)),
                "does not hold");
  ASSERT_TRUE((*b)->AddChunk(0, 8, Rows(tables_[0], row_, 8, 2)).ok());
  ASSERT_TRUE((*b)->AddChunk(0, 2, Rows(tables_[0], row_, 2, 2)).ok());
  ExpectInvalid((*b)->Finish().status(), "first missing row 4");
  auto c = LayerBuilder::Create(5, layout_, &budget_, false,
                                {{{2, 5}, {8, 10}}, {}});
  ASSERT_TRUE((*c)->AddChunk(0, 2, Rows(tables_[0], row_, 2, 3)).ok());
  ASSERT_TRUE((*c)->AddChunk(0, 8, Rows(tables_[0], row_, 8, 2)).ok());
  auto layer = (*c)->Finish();
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_FALSE((*layer)->complete());
  EXPECT_EQ((*layer)->bytes(), page_);
  EXPECT_EQ((*layer)->data_bytes(), 5 * row_);
  EXPECT_EQ(0, std::memcmp((*layer)->table(0) + 8 * row_,
                           tables_[0].data() + 8 * row_, 2 * row_));
}

TEST_F(LayerBuilderTest, BitmapHandlesWordBoundaries) {
  LayerLayout wide{{200}, 1, DType::kUInt8};
  MemoryBudget budget(1 << 20);
  auto b = LayerBuilder::Create(1, wide, &budget, false);
  ASSERT_TRUE(b.ok());
  std::string rows(200, 'x');
  ASSERT_TRUE((*b)->AddChunk(0, 60, std::string_view(rows).substr(0, 70)).ok());
  ExpectInvalid((*b)->AddChunk(0, 129, std::string_view(rows).substr(0, 2)),
                "row 129 already arrived");
  ASSERT_TRUE((*b)->AddChunk(0, 0, std::string_view(rows).substr(0, 60)).ok());
  ExpectInvalid((*b)->Finish().status(), "first missing row 130");
}

}  // namespace
}  // namespace engram
