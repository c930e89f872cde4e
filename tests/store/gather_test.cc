#include "store/gather.h"

#include <gtest/gtest.h>

#include "store/layer_builder.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

std::shared_ptr<const Layer> BuildLayer(
    const LayerLayout& layout, const std::vector<std::vector<uint8_t>>& tables,
    MemoryBudget* budget) {
  auto builder = LayerBuilder::Create(1, layout, budget, /*pin_memory=*/false);
  EXPECT_TRUE(builder.ok()) << builder.status();
  for (int h = 0; h < layout.num_heads(); ++h) {
    EXPECT_TRUE((*builder)
                    ->AddChunk(h, 0,
                               {reinterpret_cast<const char*>(tables[h].data()),
                                tables[h].size()})
                    .ok());
  }
  auto layer = (*builder)->Finish();
  EXPECT_TRUE(layer.ok()) << layer.status();
  return *layer;
}

struct GatherCase {
  DType stored;
  DType out;
  int64_t dim;
};

class GatherTest : public ::testing::TestWithParam<GatherCase> {};

TEST_P(GatherTest, MatchesNaiveReferenceBitForBit) {
  const GatherCase c = GetParam();
  MemoryBudget budget(int64_t{1} << 30);
  ThreadPool pool(3);
  LayerLayout layout{{97, 1, 300, 64}, c.dim, c.stored};
  auto tables = testing::RandomTables(layout, 11 + c.dim);
  auto layer = BuildLayer(layout, tables, &budget);
  for (int64_t batch : {1, 7, 3000}) {  // 3000*4 rows exercises the split
    auto ids = testing::RandomIds(layout, batch, 3, 100 + batch);
    auto expected = testing::ReferenceGather(layout, tables, ids, c.out);
    // Poison the output so an unwritten row cannot pass.
    std::vector<uint8_t> out(expected.size(), 0xAB);
    GatherParallel(&pool, *layer, ids.data(), static_cast<int64_t>(ids.size()),
                   c.out, out.data());
    ASSERT_EQ(out, expected) << "batch " << batch;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDTypes, GatherTest,
    ::testing::Values(
        GatherCase{DType::kFloat32, DType::kFloat32, 64},  // 256-byte rows
        GatherCase{DType::kFloat32, DType::kFloat32, 80},  // 320-byte rows
        GatherCase{DType::kFloat32, DType::kFloat32, 5},   // odd width
        GatherCase{DType::kFloat32, DType::kBFloat16, 64},
        GatherCase{DType::kFloat32, DType::kFloat16, 33},
        GatherCase{DType::kBFloat16, DType::kBFloat16, 64},
        GatherCase{DType::kBFloat16, DType::kFloat32, 64},
        GatherCase{DType::kBFloat16, DType::kFloat16, 7},
        GatherCase{DType::kFloat16, DType::kFloat16, 128},
        GatherCase{DType::kFloat16, DType::kFloat32, 17},
        GatherCase{DType::kFloat16, DType::kBFloat16, 64},
        GatherCase{DType::kUInt8, DType::kUInt8, 132},  // FP8 + scales
        GatherCase{DType::kUInt8, DType::kUInt8, 1}),
    [](const ::testing::TestParamInfo<GatherCase>& info) {
      return std::string(DTypeName(info.param.stored)) + "_to_" +
             DTypeName(info.param.out) + "_D" + std::to_string(info.param.dim);
    });

}  // namespace
}  // namespace engram
