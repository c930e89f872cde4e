#include "cluster/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace engram {
namespace {

TEST(PlacementTest, RejectsBadClusterShapes) {
  EXPECT_FALSE(Placement::Create(0, 1).ok());
  EXPECT_FALSE(Placement::Create(3, 0).ok());
  EXPECT_FALSE(Placement::Create(3, 4).ok());
  EXPECT_TRUE(Placement::Create(3, 3).ok());
}

TEST(PlacementTest, RangesTileEveryTableAndRangeOfAgrees) {
  for (int shards : {1, 2, 3, 7}) {
    auto p = *Placement::Create(shards, 1);
    for (int64_t rows : {1, 2, 3, 5, 100, 1001, 2260000}) {
      int64_t next = 0;
      for (int k = 0; k < shards; ++k) {
        RowRange r = p.Range(rows, k);
        EXPECT_EQ(r.begin, next);
        EXPECT_LE(r.size(), rows / shards + 1);
        EXPECT_GE(r.size(), rows / shards);
        next = r.end;
      }
      EXPECT_EQ(next, rows);
      const int64_t step = std::max<int64_t>(1, rows / 997);
      for (int64_t row = 0; row < rows; row += step) {
        RowRange r = p.Range(rows, p.RangeOf(rows, row));
        EXPECT_TRUE(r.begin <= row && row < r.end) << rows << " " << row;
      }
      RowRange last = p.Range(rows, p.RangeOf(rows, rows - 1));
      EXPECT_EQ(last.end, rows);
    }
  }
}

TEST(PlacementTest, EveryRowHasExactlyRDistinctOwners) {
  for (auto [shards, replication] :
       {std::pair{1, 1}, {3, 1}, {3, 2}, {3, 3}, {5, 2}}) {
    auto p = *Placement::Create(shards, replication);
    for (int64_t layer : {0, 1, -7, 123456789}) {
      for (int head = 0; head < 4; ++head) {
        for (int64_t rows : {1, 2, 5, 64, 1000}) {
          std::vector<int> count(rows, 0);
          for (int s = 0; s < shards; ++s) {
            for (RowRange r : p.OwnedRanges(layer, head, rows, s)) {
              for (int64_t row = r.begin; row < r.end; ++row) {
                ++count[row];
                EXPECT_TRUE(p.Owns(s, layer, head, rows, row));
              }
            }
          }
          for (int64_t row = 0; row < rows; ++row) {
            ASSERT_EQ(count[row], replication)
                << "row " << row << " of " << rows;
            auto owners = p.OwnersOfRow(layer, head, rows, row);
            EXPECT_EQ(std::set<int>(owners.begin(), owners.end()).size(),
                      static_cast<size_t>(replication));
          }
        }
      }
    }
  }
}

TEST(PlacementTest, LoadIsBalancedAndTinyTablesSpreadOverShards) {
  auto p = *Placement::Create(3, 2);
  // 16 heads of 2.26 M rows: every shard holds R/S of the rows, +-1 per range.
  std::map<int, int64_t> held;
  for (int h = 0; h < 16; ++h) {
    for (int s = 0; s < 3; ++s) {
      for (RowRange r : p.OwnedRanges(5, h, 2260000, s)) held[s] += r.size();
    }
  }
  for (auto [shard, rows] : held) {
    EXPECT_NEAR(rows, 16 * 2260000 * 2 / 3, 16 * 2) << "shard " << shard;
  }
  // Single-row heads (N_h < S) land on different shards per head.
  auto p1 = *Placement::Create(3, 1);
  std::set<int> primaries;
  for (int h = 0; h < 3; ++h) primaries.insert(p1.OwnersOfRow(0, h, 1, 0)[0]);
  EXPECT_EQ(primaries.size(), 3u);
}

}  // namespace
}  // namespace engram
