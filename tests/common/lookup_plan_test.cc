// PlanLookup: the checks every lookup path shares, and the row op.
#include "common/lookup_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace engram {
namespace {

using ::testing::HasSubstr;

const LayerLayout kFloatLayer{{10, 20, 30}, 4, DType::kFloat32};

void ExpectRefused(const absl::StatusOr<LookupPlan>& plan,
                   absl::StatusCode code, const char* text) {
  ASSERT_FALSE(plan.ok()) << text;
  EXPECT_EQ(plan.status().code(), code) << plan.status();
  EXPECT_THAT(plan.status().message(), HasSubstr(text));
}

TEST(LookupPlanTest, AShapedLookupGetsItsShapeDtypeAndBytes) {
  const int64_t shape[] = {2, 1, 3};
  LookupArgs args{.layer_id = 7, .num_ids = 6, .shape = shape};
  args.output_dtype = DType::kBFloat16;
  absl::StatusOr<LookupPlan> plan = PlanLookup(kFloatLayer, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->shape.batch, 2);
  EXPECT_EQ(plan->shape.heads, 3);
  EXPECT_EQ(plan->out_dtype, DType::kBFloat16);
  EXPECT_EQ(plan->out_row_bytes, 8u);
  EXPECT_EQ(plan->out_bytes, 48u);
  EXPECT_TRUE(plan->converts());
}

TEST(LookupPlanTest, WithoutAShapeTheIdsAreWholeRowsOfHeads) {
  absl::StatusOr<LookupPlan> plan =
      PlanLookup(kFloatLayer, {.layer_id = 7, .num_ids = 9});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->shape.batch, 3);
  EXPECT_EQ(plan->shape.length, 1);
  EXPECT_EQ(plan->out_bytes, 9u * 16);
  ExpectRefused(PlanLookup(kFloatLayer, {.layer_id = 7, .num_ids = 8}),
                absl::StatusCode::kInvalidArgument,
                "8 ids are not a multiple of the 3 heads looked up in layer 7");
}

TEST(LookupPlanTest, EachRefusalSaysWhatIsWrong) {
  ExpectRefused(PlanLookup(kFloatLayer, {.layer_id = 7, .num_ids = 0}),
                absl::StatusCode::kInvalidArgument, "no row ids");
  const int64_t wrong_h[] = {3, 1, 2};
  ExpectRefused(
      PlanLookup(kFloatLayer, {.layer_id = 7, .num_ids = 6, .shape = wrong_h}),
      absl::StatusCode::kInvalidArgument, "H = 2 must equal");
  LookupArgs to_bytes{.layer_id = 7, .num_ids = 3};
  to_bytes.output_dtype = DType::kUInt8;
  ExpectRefused(PlanLookup(kFloatLayer, to_bytes),
                absl::StatusCode::kInvalidArgument,
                "output_dtype uint8 cannot be produced from layer 7's float32");
  const LayerLayout bytes_layer{{4}, 264, DType::kUInt8};
  ExpectRefused(
      PlanLookup(bytes_layer, {.layer_id = 9, .num_ids = 1, .as_values = true}),
      absl::StatusCode::kInvalidArgument, "as_values needs a float");
  LookupArgs values_as_bytes{.layer_id = 7, .num_ids = 3, .as_values = true};
  values_as_bytes.output_dtype = DType::kUInt8;
  ExpectRefused(PlanLookup(kFloatLayer, values_as_bytes),
                absl::StatusCode::kInvalidArgument,
                "output_dtype uint8 cannot be produced");
  LookupArgs small{.layer_id = 7, .num_ids = 3};
  small.out_bytes = 10;
  ExpectRefused(
      PlanLookup(kFloatLayer, small), absl::StatusCode::kInvalidArgument,
      "the output buffer holds 10 bytes; 3 rows of 4 float32 need 48");
  ExpectRefused(PlanLookup(kFloatLayer, {.layer_id = 7,
                                         .num_ids = 30,
                                         .max_rows = 27,
                                         .max_rows_flag = "--max_lookup_rows"}),
                absl::StatusCode::kResourceExhausted,
                "30 rows; the limit is 27 (--max_lookup_rows)");
  ExpectRefused(
      PlanLookup(kFloatLayer, {.layer_id = 7,
                               .num_ids = 30,
                               .max_out_bytes = 100,
                               .max_out_bytes_flag = "--max_message_bytes"}),
      absl::StatusCode::kResourceExhausted,
      "480 bytes; the limit is 100 (--max_message_bytes)");
}

TEST(LookupPlanTest, PutRowCopiesOrConverts) {
  const float row[4] = {1.5f, -2.0f, 0.25f, 3.0f};
  std::vector<uint8_t> out(16);
  RowPlan(kFloatLayer, DType::kFloat32)
      .PutRow(reinterpret_cast<const uint8_t*>(row), out.data());
  EXPECT_EQ(std::memcmp(out.data(), row, 16), 0);
  const LookupPlan to_bf16 = RowPlan(kFloatLayer, DType::kBFloat16);
  to_bf16.PutRow(reinterpret_cast<const uint8_t*>(row), out.data());
  uint16_t halves[4];
  std::memcpy(halves, out.data(), 8);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(BFloat16ToFloat(halves[i]), row[i]);
}

LayerLayout QuantLayer() {
  LayerLayout l{{5, 6}, 264, DType::kUInt8};
  l.quant = {QuantFormat::kFp8E4M3Ue8m0, 32};
  return l;
}

TEST(LookupPlanTest, AQuantizedLayerGivesBytesOrDequantizedValues) {
  const LayerLayout layer = QuantLayer();
  absl::StatusOr<LookupPlan> bytes =
      PlanLookup(layer, {.layer_id = 3, .num_ids = 4});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_FALSE(bytes->dequantizes());
  EXPECT_EQ(bytes->out_row_bytes, 264u);
  for (DType to : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    LookupArgs args{.layer_id = 3, .num_ids = 4};
    args.output_dtype = to;
    absl::StatusOr<LookupPlan> values = PlanLookup(layer, args);
    ASSERT_TRUE(values.ok()) << values.status();
    EXPECT_TRUE(values->dequantizes());
    EXPECT_EQ(values->dim, 256u);
    EXPECT_EQ(values->out_row_bytes, 256 * DTypeSize(to));
    EXPECT_EQ(values->out_bytes, 4 * 256 * DTypeSize(to));
  }
  LookupArgs as_values{.layer_id = 3, .num_ids = 2, .as_values = true};
  absl::StatusOr<LookupPlan> v = PlanLookup(layer, as_values);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->out_dtype, DType::kFloat32);
  EXPECT_EQ(v->dim, 256u);
  // A plain uint8 layer still has no values.
  LayerLayout plain = layer;
  plain.quant = {};
  ExpectRefused(PlanLookup(plain, as_values),
                absl::StatusCode::kInvalidArgument, "as_values needs");
}

TEST(LookupPlanTest, PutRowDequantizesBlockByBlock) {
  // Block 0 scale 2^0, block 1 2^-127 (code 0), block 2 NaN, the rest 2^3.
  std::vector<uint8_t> row(264, 0);
  for (int i = 0; i < 256; ++i) row[i] = static_cast<uint8_t>(i);
  row[256] = 127;
  row[257] = 0;
  row[258] = 255;
  for (int b = 3; b < 8; ++b) row[256 + b] = 130;
  std::vector<float> out(256);
  RowPlan(QuantLayer(), DType::kFloat32)
      .PutRow(row.data(), reinterpret_cast<uint8_t*>(out.data()));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(out[8], std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(out[0x1f], 1.875f * std::ldexp(1.0f, -4));
  EXPECT_EQ(out[0x20], std::ldexp(1.0f, -3 - 127));  // 2^-3 * 2^-127
  for (int i = 64; i < 96; ++i) EXPECT_TRUE(std::isnan(out[i])) << i;
  EXPECT_EQ(out[0x78], 256.0f * 8);    // 2^8 * 2^3
  EXPECT_EQ(out[0x7e], 448.0f * 8);    // the largest E4M3
  EXPECT_TRUE(std::isnan(out[0x7f]));  // S.1111.111
  EXPECT_EQ(out[0xb8], -1.0f * 8);     // 0xb8 = -1.0
  EXPECT_TRUE(std::isnan(out[0xff]));
  uint32_t nan_bits;
  std::memcpy(&nan_bits, &out[0xff], 4);
  EXPECT_EQ(nan_bits, 0x7fc00000u);  // canonical, not negative
  std::vector<uint16_t> bf16(256);
  RowPlan(QuantLayer(), DType::kBFloat16)
      .PutRow(row.data(), reinterpret_cast<uint8_t*>(bf16.data()));
  EXPECT_EQ(bf16[0x7e], 0x4560);  // 3584 = 1.75 * 2^11
  EXPECT_EQ(bf16[0xff], 0x7fc0);
}

// kFloatLayer's fused ids: head 0 [0, 10), head 1 [10, 30), head 2 [30, 60).
TEST(LookupPlanTest, FusedIdsPerColumnLoseTheirHeadsOffsets) {
  const int64_t ids[] = {9, 10, 59, 0, 29, 30};
  LookupArgs args{.layer_id = 7, .num_ids = 6};
  args.id_form = IdForm::kFused;
  absl::StatusOr<LookupPlan> plan = PlanLookup(kFloatLayer, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->plain);
  ResolvedIds resolved;
  ASSERT_TRUE(ResolveIds(kFloatLayer, *plan, ids, &resolved).ok());
  EXPECT_THAT(resolved.rows, ::testing::ElementsAre(9, 0, 29, 0, 19, 0));
  EXPECT_TRUE(resolved.heads.empty());  // column h is still head h
  const int64_t wrong[] = {9, 10, 30, 0, 30, 59};
  absl::Status s = ResolveIds(kFloatLayer, *plan, wrong, &resolved);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("row_ids[1, 0, 1] = 30 is out of range: column 1 is "
                        "head 1, whose fused ids are [10, 30)"));
}

TEST(LookupPlanTest, EntriesFindTheirHeadsAndStayInTheSlice) {
  const int64_t ids[] = {0, 9, 10, 29, 30, 59, 15};
  LookupArgs args{.layer_id = 7, .num_ids = 7};
  args.id_form = IdForm::kEntries;
  absl::StatusOr<LookupPlan> plan = PlanLookup(kFloatLayer, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->OutShape(), ::testing::ElementsAre(7, 4));
  ResolvedIds resolved;
  ASSERT_TRUE(ResolveIds(kFloatLayer, *plan, ids, &resolved).ok());
  EXPECT_THAT(resolved.heads, ::testing::ElementsAre(0, 0, 1, 1, 2, 2, 1));
  EXPECT_THAT(resolved.rows, ::testing::ElementsAre(0, 9, 0, 19, 0, 29, 5));
  args.head_begin = 1;
  args.head_end = 2;
  plan = PlanLookup(kFloatLayer, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::Status s = ResolveIds(kFloatLayer, *plan, ids, &resolved);
  EXPECT_THAT(s.message(),
              HasSubstr("row_ids[0] = 0 is outside the fused id range [10, "
                        "30) of heads [1, 2)"));
  const int64_t two_d[] = {7, 1};
  args.shape = two_d;
  ExpectRefused(PlanLookup(kFloatLayer, args),
                absl::StatusCode::kInvalidArgument, "shape [n]");
}

TEST(LookupPlanTest, AHeadSliceNamesItsColumnsHeads) {
  const int64_t shape[] = {2, 1, 2};
  const int64_t ids[] = {19, 29, 0, 0};
  LookupArgs args{.layer_id = 7, .num_ids = 4, .shape = shape};
  args.head_begin = 1;
  absl::StatusOr<LookupPlan> plan = PlanLookup(kFloatLayer, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->head_end, 3);
  EXPECT_THAT(plan->OutShape(), ::testing::ElementsAre(2, 1, 2, 4));
  ResolvedIds resolved;
  ASSERT_TRUE(ResolveIds(kFloatLayer, *plan, ids, &resolved).ok());
  EXPECT_THAT(resolved.heads, ::testing::ElementsAre(1, 2, 1, 2));
  const int64_t past[] = {20, 0, 0, 0};
  EXPECT_THAT(ResolveIds(kFloatLayer, *plan, past, &resolved).message(),
              HasSubstr("column 0 is head 1, whose ids are [0, 20)"));
  args.head_begin = 2;
  args.head_end = 2;
  ExpectRefused(PlanLookup(kFloatLayer, args),
                absl::StatusCode::kInvalidArgument,
                "head slice [2, 2) is not a non-empty range");
  args.head_begin = 0;
  args.head_end = 4;
  ExpectRefused(PlanLookup(kFloatLayer, args),
                absl::StatusCode::kInvalidArgument, "of layer 7's 3 heads");
}

}  // namespace
}  // namespace engram
