// GpuTier against the CPU gather; skips without a CUDA device.
#include "store/gpu_tier.h"

#include <gtest/gtest.h>

#include <thread>

#include "store/gather.h"
#include "store/layer_builder.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

class GpuTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (gpu::DeviceCount(&why) == 0) GTEST_SKIP() << "no GPU: " << why;
    GpuTier::Options options;
    options.memory_limit_bytes = 64 << 20;
    options.streams = 3;
    auto tier = GpuTier::Open(options);
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = *std::move(tier);
  }

  std::shared_ptr<Layer> Build(
      const LayerLayout& layout,
      const std::vector<std::vector<uint8_t>>& tables) {
    auto b = LayerBuilder::Create(1, layout, &budget_, true);
    EXPECT_TRUE(b.ok());
    for (int h = 0; h < layout.num_heads(); ++h) {
      EXPECT_TRUE(
          (*b)->AddChunk(h, 0,
                         {reinterpret_cast<const char*>(tables[h].data()),
                          tables[h].size()})
              .ok());
    }
    return *(*b)->Finish();
  }

  MemoryBudget budget_{int64_t{1} << 30};
  std::unique_ptr<GpuTier> tier_;
};

TEST_F(GpuTierTest, MirroredGatherMatchesCpuForEveryConversion) {
  for (DType stored :
       {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kUInt8}) {
    LayerLayout layout{
        {1000, 77, 4096}, stored == DType::kUInt8 ? 132 : 40, stored};
    auto tables = testing::RandomTables(layout, static_cast<int>(stored));
    auto layer = Build(layout, tables);
    auto mirror = tier_->Mirror(*layer);
    ASSERT_TRUE(mirror.ok()) << mirror.status();
    EXPECT_EQ((*mirror)->bytes(), layout.total_bytes());
    for (DType out :
         {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kUInt8}) {
      if (!CanConvert(stored, out)) continue;
      auto ids = testing::RandomIds(layout, 50, 7, 11 + static_cast<int>(out));
      const size_t bytes = ids.size() * layout.embedding_dim * DTypeSize(out);
      void* token = nullptr;
      uint8_t* got = tier_->AllocResponse(bytes, &token);
      ASSERT_NE(got, nullptr);
      std::memset(got, 0x5c, bytes);
      ASSERT_TRUE(
          tier_->Gather(**mirror, ids.data(), ids.size(), out, got).ok());
      std::vector<uint8_t> want(bytes);
      GatherRows(*layer, ids.data(), 0, ids.size(), out, want.data());
      EXPECT_EQ(0, std::memcmp(got, want.data(), bytes))
          << DTypeName(stored) << " -> " << DTypeName(out);
      GpuTier::FreeResponse(token);
    }
  }
  EXPECT_EQ(tier_->budget().used(), 0u) << "mirrors freed with their layers";
}

TEST_F(GpuTierTest, BudgetIsEnforcedAndHostStaysPinnedForTheDevice) {
  HostBuffer::EnableCudaPinning(true);
  LayerLayout big{{(80 << 20) / 256}, 64};  // 80 MiB > 64 MiB budget
  auto tables = testing::RandomTables(big, 1);
  auto layer = Build(big, tables);
  EXPECT_EQ(layer->pin_mode(), PinMode::kCudaHost);
  EXPECT_EQ(tier_->Mirror(*layer).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tier_->budget().used(), 0u);
  HostBuffer::EnableCudaPinning(false);
}

TEST_F(GpuTierTest, ConcurrentGathersShareTheStreamPool) {
  LayerLayout layout{{5000, 6000}, 64};
  auto tables = testing::RandomTables(layout, 4);
  auto layer = Build(layout, tables);
  auto mirror = tier_->Mirror(*layer);
  ASSERT_TRUE(mirror.ok());
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {  // more threads than streams
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        auto ids = testing::RandomIds(layout, 64, 8, t * 100 + i);
        std::vector<uint8_t> got(ids.size() * 256), want(ids.size() * 256);
        if (!tier_
                 ->Gather(**mirror, ids.data(), ids.size(), DType::kFloat32,
                          got.data())
                 .ok()) {
          ++mismatches;
          continue;
        }
        GatherRows(*layer, ids.data(), 0, ids.size(), DType::kFloat32,
                   want.data());
        if (got != want) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(GpuTierOpenTest, NoDeviceIsUnavailableWithAReason) {
  std::string why;
  if (gpu::DeviceCount(&why) > 0) GTEST_SKIP() << "a device is present";
  auto tier = GpuTier::Open({});
  EXPECT_EQ(tier.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(tier.status().message().empty());
}

}  // namespace
}  // namespace engram
