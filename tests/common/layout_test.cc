#include "common/layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace engram {
namespace {

using ::testing::HasSubstr;

LayerLayout Layout(std::vector<int64_t> sizes, int64_t dim = 4,
                   DType dtype = DType::kFloat32) {
  return LayerLayout{std::move(sizes), dim, dtype};
}

void ExpectInvalid(const absl::Status& s, const std::string& fragment) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(fragment));
}

TEST(LayoutTest, AcceptsValidLayoutsAndComputesSizes) {
  LayerLayout l = Layout({3, 5}, 8, DType::kBFloat16);
  EXPECT_TRUE(ValidateLayout(l).ok());
  EXPECT_EQ(l.row_bytes(), 16u);
  EXPECT_EQ(l.table_bytes(1), 80u);
  EXPECT_EQ(l.total_bytes(), 128u);
  EXPECT_EQ(StoreKey(12, 3), "engram:l12:h3");
}

TEST(LayoutTest, RejectsEachLayoutInvariant) {
  ExpectInvalid(ValidateLayout(Layout({})), "at least one head");
  ExpectInvalid(ValidateLayout(Layout({4, 0})), "table_vocab_sizes[1] = 0");
  ExpectInvalid(ValidateLayout(Layout({-2})), "table_vocab_sizes[0] = -2");
  ExpectInvalid(ValidateLayout(Layout({4}, 0)), "embedding_dim = 0");
  ExpectInvalid(ValidateLayout(Layout({4}, -1)), "embedding_dim = -1");
  ExpectInvalid(ValidateLayout(Layout({int64_t{1} << 41})), "exceeds");
  ExpectInvalid(ValidateLayout(Layout(std::vector<int64_t>(kMaxHeads + 1, 1))),
                "heads");
  ExpectInvalid(ValidateLayout(Layout({4}, 4, static_cast<DType>(9))),
                "dtype 9");
}

TEST(LayoutTest, LookupShapeInvariants) {
  LayerLayout l = Layout({10, 20, 30});
  LookupShape shape;
  const int64_t good[] = {2, 4, 3};
  ASSERT_TRUE(ValidateLookupShape(l.num_heads(), good, 24, &shape).ok());
  EXPECT_EQ(shape.num_ids(), 24);
  const int64_t rank2[] = {2, 3};
  ExpectInvalid(ValidateLookupShape(l.num_heads(), rank2, 6, &shape), "rank 2");
  ExpectInvalid(ValidateLookupShape(l.num_heads(), {}, 0, &shape), "rank 0");
  const int64_t wrong_h[] = {1, 1, 4};
  ExpectInvalid(ValidateLookupShape(l.num_heads(), wrong_h, 4, &shape),
                "H = 4 must equal the 3 heads looked up");
  const int64_t zero_b[] = {0, 1, 3};
  ExpectInvalid(ValidateLookupShape(l.num_heads(), zero_b, 0, &shape), "B >= 1");
  ExpectInvalid(ValidateLookupShape(l.num_heads(), good, 23, &shape),
                "needs 24 row ids; got 23");
  const int64_t huge[] = {int64_t{1} << 40, int64_t{1} << 40, 3};
  ExpectInvalid(ValidateLookupShape(l.num_heads(), huge, 3, &shape), "too many");
}

TEST(LayoutTest, RowIdsNameTheOffendingPosition) {
  LayerLayout l = Layout({10, 20});
  LookupShape shape{2, 3, 2};
  std::vector<int64_t> ids(12, 0);
  EXPECT_TRUE(ValidateRowIds(l, shape, ids.data()).ok());
  ids[1] = 19;
  ids[10] = 9;  // [1, 2, 0] -> head 0, max 9
  EXPECT_TRUE(ValidateRowIds(l, shape, ids.data()).ok());
  ids[7] = 20;  // [1, 0, 1]: head 1 has 20 rows
  ExpectInvalid(ValidateRowIds(l, shape, ids.data()),
                "row_ids[1, 0, 1] = 20 is out of range: head 1 has 20 rows");
  ids[7] = 0;
  ids[4] = -1;  // [0, 2, 0]
  ExpectInvalid(ValidateRowIds(l, shape, ids.data()), "row_ids[0, 2, 0] = -1");
}

TEST(LayoutTest, QuantizedLayersAreUint8RowsOfWeightsAndScales) {
  LayerLayout l{{10}, 264, DType::kUInt8};
  l.quant = {QuantFormat::kFp8E4M3Ue8m0, 32};
  EXPECT_TRUE(ValidateLayout(l).ok()) << ValidateLayout(l);
  EXPECT_EQ(l.values_per_row(), 256);
  EXPECT_EQ(l.row_bytes(), 264u);
  l.quant.block = 128;  // 258 is not 256 + 2: 264 % 129 != 0
  ExpectInvalid(ValidateLayout(l), "multiple of 129");
  l.embedding_dim = 258;
  EXPECT_TRUE(ValidateLayout(l).ok());
  EXPECT_EQ(l.values_per_row(), 256);
  l.quant.block = 0;
  ExpectInvalid(ValidateLayout(l), "block = 0 must be in [1, 65536]");
  l.quant = {QuantFormat::kFp8E4M3Ue8m0, 32};
  l.embedding_dim = 264;
  l.dtype = DType::kBFloat16;
  ExpectInvalid(ValidateLayout(l), "stores uint8 row bytes, not bfloat16");
  l.dtype = DType::kUInt8;
  l.quant = {QuantFormat::kNone, 32};
  ExpectInvalid(ValidateLayout(l), "block without a quantization format");
  l.quant = {static_cast<QuantFormat>(9), 32};
  ExpectInvalid(ValidateLayout(l), "format 9 is not known");
}

TEST(LayoutTest, QuantSpellings) {
  absl::StatusOr<Quant> q = QuantFromNames("fp8_e4m3", "ue8m0", 32);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, (Quant{QuantFormat::kFp8E4M3Ue8m0, 32}));
  EXPECT_STREQ(QuantFormatName(q->format), "fp8_e4m3");
  EXPECT_STREQ(QuantScaleName(q->format), "ue8m0");
  ExpectInvalid(QuantFromNames("int4", "ue8m0", 32).status(),
                "format \"int4\" is not known");
  ExpectInvalid(QuantFromNames("fp8_e4m3", "e5m2", 32).status(),
                "scale \"e5m2\" is not known");
  ExpectInvalid(QuantFromNames("fp8_e4m3", "ue8m0", -1).status(), "block = -1");
  ExpectInvalid(QuantFromNames("fp8_e4m3", "ue8m0", int64_t{1} << 40).status(),
                "block = 1099511627776");
}

}  // namespace
}  // namespace engram
