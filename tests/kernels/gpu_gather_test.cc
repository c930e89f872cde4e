// CUDA gather kernels against the CPU reference gather. Skips (with the
// reason) when the build has no CUDA or the machine no device.
#include <gtest/gtest.h>

#include <random>

#include "kernels/gpu.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

class GpuGatherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (gpu::DeviceCount(&why) == 0) GTEST_SKIP() << "no GPU: " << why;
    ASSERT_TRUE(gpu::SetDevice(0).ok());
    auto s = gpu::StreamCreate();
    ASSERT_TRUE(s.ok()) << s.status();
    stream_ = *s;
  }
  void TearDown() override {
    for (void* p : allocations_) gpu::DeviceFree(p);
    gpu::StreamDestroy(stream_);
  }
  template <typename T = uint8_t>
  T* Upload(const void* host, size_t bytes) {
    auto p = gpu::DeviceAlloc(std::max<size_t>(bytes, 1));
    EXPECT_TRUE(p.ok()) << p.status();
    allocations_.push_back(*p);
    if (bytes > 0) EXPECT_TRUE(gpu::CopyToDevice(*p, host, bytes).ok());
    return static_cast<T*>(*p);
  }

  // Runs the kernel for `ids`; returns the output (poisoned first) and the
  // error flag.
  std::vector<uint8_t> Run(const LayerLayout& layout,
                           const std::vector<std::vector<uint8_t>>& tables,
                           const std::vector<int64_t>& ids, DType out_dtype,
                           uint64_t* error) {
    std::vector<const uint8_t*> table_ptrs;
    for (const auto& t : tables)
      table_ptrs.push_back(Upload(t.data(), t.size()));
    gpu::GatherLaunch g;
    g.tables = Upload<const uint8_t* const>(table_ptrs.data(),
                                            table_ptrs.size() * sizeof(void*));
    g.vocab = Upload<const int64_t>(layout.table_vocab_sizes.data(),
                                    layout.num_heads() * sizeof(int64_t));
    g.heads = layout.num_heads();
    g.dim = layout.embedding_dim;
    g.in_dtype = static_cast<int>(layout.dtype);
    g.out_dtype = static_cast<int>(out_dtype);
    g.ids = Upload<const int64_t>(ids.data(), ids.size() * sizeof(int64_t));
    g.num_ids = static_cast<int64_t>(ids.size());
    const size_t out_bytes =
        ids.size() * layout.embedding_dim * DTypeSize(out_dtype);
    std::vector<uint8_t> poison(out_bytes, 0xA5);
    g.out = Upload(poison.data(), out_bytes);
    uint64_t zero = 0;
    g.error_flag = Upload<uint64_t>(&zero, sizeof(zero));
    EXPECT_TRUE(gpu::ResetErrorFlag(g.error_flag, stream_).ok());
    absl::Status s = gpu::LaunchGather(g, stream_);
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(gpu::StreamSynchronize(stream_).ok());
    std::vector<uint8_t> out(out_bytes);
    EXPECT_TRUE(gpu::CopyToHost(out.data(), g.out, out_bytes).ok());
    EXPECT_TRUE(gpu::CopyToHost(error, g.error_flag, sizeof(uint64_t)).ok());
    return out;
  }

  gpu::Stream stream_ = nullptr;
  std::vector<void*> allocations_;
};

struct KernelCase {
  DType stored, out;
  int64_t dim;
};

class GpuGatherDTypeTest : public GpuGatherTest,
                           public ::testing::WithParamInterface<KernelCase> {};

TEST_P(GpuGatherDTypeTest, MatchesCpuReferenceBitForBit) {
  const KernelCase c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.dim * 31 + static_cast<int>(c.out)));
  for (int round = 0; round < 3; ++round) {  // fresh random layout each round
    LayerLayout layout;
    const int heads = 1 + rng() % 17;
    for (int h = 0; h < heads; ++h)
      layout.table_vocab_sizes.push_back(1 + rng() % 5000);
    layout.embedding_dim = c.dim;
    layout.dtype = c.stored;
    auto tables = testing::RandomTables(layout, rng());
    const int64_t batch = 1 + rng() % 300, length = 1 + rng() % 9;
    auto ids = testing::RandomIds(layout, batch, length, rng());
    uint64_t error = 0;
    auto got = Run(layout, tables, ids, c.out, &error);
    EXPECT_EQ(error, gpu::kNoError);
    EXPECT_EQ(got, testing::ReferenceGather(layout, tables, ids, c.out))
        << "heads " << heads << " batch " << batch << " length " << length;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllDTypesAndWidths, GpuGatherDTypeTest,
    ::testing::Values(
        KernelCase{DType::kFloat32, DType::kFloat32, 64},  // 16-byte pieces
        KernelCase{DType::kFloat32, DType::kFloat32, 80},
        KernelCase{DType::kFloat32, DType::kFloat32, 3},  // 12 bytes: 4-byte
        KernelCase{DType::kFloat32, DType::kFloat32, 1},
        KernelCase{DType::kFloat32, DType::kBFloat16, 64},
        KernelCase{DType::kFloat32, DType::kFloat16, 7},
        KernelCase{DType::kBFloat16, DType::kBFloat16, 128},
        KernelCase{DType::kBFloat16, DType::kBFloat16, 5},  // 10 bytes: 2-byte
        KernelCase{DType::kBFloat16, DType::kFloat32, 80},
        KernelCase{DType::kBFloat16, DType::kFloat16, 33},
        KernelCase{DType::kFloat16, DType::kFloat16, 4},  // 8 bytes
        KernelCase{DType::kFloat16, DType::kFloat32, 17},
        KernelCase{DType::kFloat16, DType::kBFloat16, 64},
        KernelCase{DType::kUInt8, DType::kUInt8, 132},  // FP8 + scales
        KernelCase{DType::kUInt8, DType::kUInt8, 13},   // odd: 1-byte
        KernelCase{DType::kUInt8, DType::kUInt8, 1}),
    [](const ::testing::TestParamInfo<KernelCase>& info) {
      return std::string(DTypeName(info.param.stored)) + "_to_" +
             DTypeName(info.param.out) + "_D" + std::to_string(info.param.dim);
    });

TEST_F(GpuGatherTest, OutOfRangeIdsSetTheErrorFlagAndAreNeverRead) {
  LayerLayout layout{{100, 50}, 16, DType::kFloat32};
  auto tables = testing::RandomTables(layout, 3);
  for (DType out : {DType::kFloat32, DType::kBFloat16}) {
    std::vector<int64_t> ids = {1,  2,  3,  49,
                                99, 50, -1, 0};  // rows 5 and 6 bad
    uint64_t error = 0;
    auto got = Run(layout, tables, ids, out, &error);
    EXPECT_EQ(error, 5u) << "first bad row";
    const size_t row = 16 * DTypeSize(out);
    auto expected = testing::ReferenceGather(layout, tables,
                                             {1, 2, 3, 49, 99, 0, 0, 0}, out);
    // Good rows are written; bad rows keep the poison.
    for (size_t r : {0, 1, 2, 3, 4, 7}) {
      EXPECT_TRUE(std::equal(got.begin() + r * row, got.begin() + (r + 1) * row,
                             expected.begin() + r * row))
          << "row " << r;
    }
    for (size_t r : {5, 6}) {
      EXPECT_TRUE(std::all_of(got.begin() + r * row,
                              got.begin() + (r + 1) * row,
                              [](uint8_t b) { return b == 0xA5; }))
          << "row " << r;
    }
  }
}

TEST(GpuAvailabilityTest, ReportsWhyWhenNoDevice) {
  std::string why;
  if (gpu::DeviceCount(&why) > 0) GTEST_SKIP() << "a device is present";
  EXPECT_FALSE(why.empty());
  EXPECT_FALSE(gpu::SetDevice(0).ok() && gpu::DeviceAlloc(16).ok());
}

}  // namespace
}  // namespace engram
