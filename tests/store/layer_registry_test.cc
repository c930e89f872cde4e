#include "store/layer_registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "store/gather.h"
#include "store/layer_builder.h"

namespace engram {
namespace {

// A layer whose row r of head h is filled with bytes (layer_id + h + r) & 0xff
// so a reader can tell valid rows from freed or reused memory.
std::shared_ptr<const Layer> PatternLayer(int64_t id, MemoryBudget* budget) {
  LayerLayout layout{{64, 128}, 16, DType::kUInt8};
  auto b = LayerBuilder::Create(id, layout, budget, false);
  EXPECT_TRUE(b.ok());
  for (int h = 0; h < 2; ++h) {
    std::string rows(layout.table_bytes(h), '\0');
    for (int64_t r = 0; r < layout.table_vocab_sizes[h]; ++r) {
      std::fill_n(rows.begin() + r * 16, 16, static_cast<char>(id + h + r));
    }
    EXPECT_TRUE((*b)->AddChunk(h, 0, rows).ok());
  }
  return *(*b)->Finish();
}

TEST(LayerRegistryTest, ReplaceSwapsAtCommitAndVersionsCount) {
  MemoryBudget budget(1 << 20);
  LayerRegistry registry;
  auto first = registry.BeginPopulate(5);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(registry.Commit(*first, PatternLayer(5, &budget)).ok());
  std::shared_ptr<const Layer> v1 = registry.Find(5);
  EXPECT_EQ(v1->version(), 1u);
  // A replace that fails leaves version 1 serving.
  auto failed = registry.BeginPopulate(5, nullptr, /*replace=*/true);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(registry.BeginPopulate(5, nullptr, true).status().code(),
            absl::StatusCode::kAlreadyExists)
      << "one populate of an id at a time";
  EXPECT_EQ(registry.Find(5), v1) << "the old version serves meanwhile";
  registry.Abandon(*failed);
  EXPECT_EQ(registry.Find(5), v1);
  // A replace that commits swaps: readers holding version 1 keep it.
  auto replace = registry.BeginPopulate(5, nullptr, true);
  ASSERT_TRUE(replace.ok());
  ASSERT_TRUE(registry.Commit(*replace, PatternLayer(7, &budget)).ok());
  std::shared_ptr<const Layer> v2 = registry.Find(5);
  EXPECT_NE(v2, v1);
  EXPECT_EQ(v2->version(), 2u);
  EXPECT_EQ(v1->table(0)[0], 5) << "the old rows live while held";
  EXPECT_EQ(v2->table(0)[0], 7);
  // Versions keep counting across Remove.
  ASSERT_TRUE(registry.Remove(5, false).ok());
  auto again = registry.BeginPopulate(5);
  ASSERT_TRUE(registry.Commit(*again, PatternLayer(5, &budget)).ok());
  EXPECT_EQ(registry.Find(5)->version(), 3u);
}

TEST(LayerRegistryTest, CreateOnlyAndRemoveSemantics) {
  MemoryBudget budget(1 << 20);
  LayerRegistry registry;
  auto ticket = registry.BeginPopulate(3);
  ASSERT_TRUE(ticket.ok());
  EXPECT_EQ(registry.BeginPopulate(3).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Remove(3, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry.Find(3), nullptr) << "not visible before commit";
  ASSERT_TRUE(registry.Commit(*ticket, PatternLayer(3, &budget)).ok());
  ASSERT_NE(registry.Find(3), nullptr);
  EXPECT_EQ(registry.BeginPopulate(3).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(*registry.Remove(3, false), 2);
  EXPECT_EQ(registry.Find(3), nullptr);
  EXPECT_EQ(registry.Remove(3, false).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry.BeginPopulate(3).ok()) << "id reusable after Remove";
}

TEST(LayerRegistryTest, ForcedRemoveAbortsPopulateAndRunsHook) {
  MemoryBudget budget(1 << 20);
  LayerRegistry registry;
  bool hook_ran = false;
  auto ticket = registry.BeginPopulate(9, [&] { hook_ran = true; });
  ASSERT_TRUE(ticket.ok());
  EXPECT_EQ(*registry.Remove(9, true), 0);
  EXPECT_TRUE(hook_ran);
  EXPECT_TRUE((*ticket)->aborted());
  EXPECT_EQ(registry.Commit(*ticket, PatternLayer(9, &budget)).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(registry.Find(9), nullptr);
  EXPECT_EQ(budget.used(), 0u) << "the rejected layer was freed";
}

TEST(LayerRegistryTest, AbandonReleasesTheId) {
  LayerRegistry registry;
  auto ticket = registry.BeginPopulate(1);
  registry.Abandon(*ticket);
  EXPECT_TRUE(registry.BeginPopulate(1).ok());
}

// Readers gather from layers while writers populate and remove them; every
// row a reader sees must carry its layer's pattern. Run under TSan in CI.
TEST(LayerRegistryTest, ConcurrentLookupRemovePopulateNeverSeeFreedMemory) {
  MemoryBudget budget(int64_t{1} << 30);
  LayerRegistry registry;
  constexpr int kLayers = 4;
  for (int id = 0; id < kLayers; ++id) {
    auto t = registry.BeginPopulate(id);
    ASSERT_TRUE(registry.Commit(*t, PatternLayer(id, &budget)).ok());
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> lookups{0}, misses{0}, corrupt{0};
  auto reader = [&](int seed) {
    std::vector<int64_t> ids(2 * 8);
    std::vector<uint8_t> out(ids.size() * 16);
    uint32_t x = seed;
    while (!stop.load(std::memory_order_relaxed)) {
      x = x * 1664525u + 1013904223u;
      const int64_t id = x % kLayers;
      std::shared_ptr<const Layer> layer = registry.Find(id);
      if (layer == nullptr) {
        misses.fetch_add(1);
        continue;
      }
      for (size_t i = 0; i < ids.size(); ++i)
        ids[i] = (x >> 8) % (i % 2 ? 128 : 64);
      GatherRows(*layer, ids.data(), 0, ids.size(), DType::kUInt8, out.data());
      for (size_t i = 0; i < ids.size(); ++i) {
        const uint8_t want = static_cast<uint8_t>(id + i % 2 + ids[i]);
        for (int e = 0; e < 16; ++e) {
          if (out[i * 16 + e] != want) corrupt.fetch_add(1);
        }
      }
      lookups.fetch_add(1);
    }
  };
  auto writer = [&] {
    for (int round = 0; round < 200; ++round) {
      const int64_t id = round % kLayers;
      absl::StatusOr<int> removed = registry.Remove(id, false);
      ASSERT_TRUE(removed.ok()) << removed.status();
      auto t = registry.BeginPopulate(id);
      ASSERT_TRUE(t.ok());
      ASSERT_TRUE(registry.Commit(*t, PatternLayer(id, &budget)).ok());
    }
  };
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) readers.emplace_back(reader, i + 1);
  std::thread w(writer);
  w.join();
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(corrupt.load(), 0);
  EXPECT_GT(lookups.load(), 0);
  EXPECT_EQ(registry.size(), static_cast<size_t>(kLayers));
  for (auto& layer : registry.List()) EXPECT_LT(layer->id(), kLayers);
}

}  // namespace
}  // namespace engram
