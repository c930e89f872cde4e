// Which table and row a zero-copy lookup reads (kernels/view_rows.h), on
// the CPU, against the server's ResolveIds for every id form: per-head and
// fused ids with and without a head slice, and entries; ids outside their
// table never name a row.
#include "kernels/view_rows.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/lookup_plan.h"

namespace engram {
namespace {

struct Case {
  IdForm form;
  int64_t head_begin, head_end;  // head_end 0: all
};

gpu::ViewRowForm FormOf(const LookupPlan& plan) {
  gpu::ViewRowForm f;
  f.id_form = static_cast<int32_t>(plan.id_form);
  f.head_begin = static_cast<int32_t>(plan.head_begin);
  f.head_end = static_cast<int32_t>(plan.head_end);
  f.columns = plan.id_form == IdForm::kEntries
                  ? 1
                  : static_cast<int32_t>(plan.shape.heads);
  return f;
}

// The reads of `ids` (a lookup of `c` over `layout`) against ResolveIds;
// then ids ResolveIds refuses name no row here either.
void ExpectSameRows(const LayerLayout& layout, const Case& c,
                    std::vector<int64_t> ids) {
  const std::vector<int64_t> offsets = FusedOffsets(layout);  // H + 1
  const bool entries = c.form == IdForm::kEntries;
  const int64_t end = c.head_end == 0 ? layout.num_heads() : c.head_end;
  const int64_t columns = end - c.head_begin;
  const int64_t n = static_cast<int64_t>(ids.size());
  LookupArgs args;
  args.num_ids = n;
  args.id_form = c.form;
  args.head_begin = c.head_begin;
  args.head_end = c.head_end;
  const int64_t shape_pos[] = {n / columns, 1, columns};
  const int64_t shape_entries[] = {n};
  args.shape = entries ? std::span<const int64_t>(shape_entries)
                       : std::span<const int64_t>(shape_pos);
  absl::StatusOr<LookupPlan> plan = PlanLookup(layout, args);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ResolvedIds resolved;
  ASSERT_TRUE(ResolveIds(layout, *plan, ids.data(), &resolved).ok());
  const gpu::ViewRowForm f = FormOf(*plan);
  const std::string what =
      absl::StrCat("form ", static_cast<int>(c.form), " heads [", c.head_begin,
                   ", ", end, ")");
  for (int64_t i = 0; i < n; ++i) {
    int table = -1;
    const int64_t row = gpu::ViewRow(f, i, ids[i], offsets.data(), &table);
    const int64_t want_table =
        resolved.heads.empty() ? i % layout.num_heads() : resolved.heads[i];
    const int64_t want_row = plan->plain ? ids[i] : resolved.rows[i];
    ASSERT_EQ(table, want_table) << what << ", id " << i;
    ASSERT_EQ(row, want_row) << what << ", id " << i;
  }
  for (int64_t bad : {int64_t{-1}, offsets.back(), offsets.back() - 1,
                      offsets[1], int64_t{57}}) {
    ids[0] = bad;
    const bool refused = !ResolveIds(layout, *plan, ids.data(), &resolved).ok();
    int table = -1;
    const int64_t row = gpu::ViewRow(f, 0, bad, offsets.data(), &table);
    const bool outside = row < 0 || row >= layout.table_vocab_sizes[table];
    EXPECT_EQ(outside, refused) << what << ", id " << bad;
  }
}

// Random valid ids of `c` over `layout`.
std::vector<int64_t> RandomIds(const LayerLayout& layout, const Case& c,
                               std::mt19937_64& rng) {
  const std::vector<int64_t> offsets = FusedOffsets(layout);
  const int64_t end = c.head_end == 0 ? layout.num_heads() : c.head_end;
  const int64_t columns = end - c.head_begin;
  std::vector<int64_t> ids(c.form == IdForm::kEntries ? 64 : 16 * columns);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (c.form == IdForm::kEntries) {
      ids[i] =
          offsets[c.head_begin] +
          static_cast<int64_t>(rng() % (offsets[end] - offsets[c.head_begin]));
      continue;
    }
    const int64_t h = c.head_begin + static_cast<int64_t>(i) % columns;
    const int64_t local =
        static_cast<int64_t>(rng() % layout.table_vocab_sizes[h]);
    ids[i] = c.form == IdForm::kPerHead ? local : offsets[h] + local;
  }
  return ids;
}

TEST(ViewRowsTest, EveryFormReadsTheRowsResolveIdsNames) {
  const LayerLayout layout{{101, 57, 300, 13, 1, 40}, 8, DType::kFloat32};
  std::mt19937_64 rng(3);
  for (const Case& c :
       {Case{IdForm::kPerHead, 0, 0}, Case{IdForm::kFused, 0, 0},
        Case{IdForm::kPerHead, 2, 5}, Case{IdForm::kFused, 3, 5},
        Case{IdForm::kFused, 5, 6}, Case{IdForm::kEntries, 0, 0},
        Case{IdForm::kEntries, 2, 6}}) {
    ExpectSameRows(layout, c, RandomIds(layout, c, rng));
  }
}

TEST(ViewRowsTest, EntriesSkipEmptyTables) {
  const LayerLayout layout{{10, 0, 0, 7, 0, 5}, 8, DType::kFloat32};
  std::mt19937_64 rng(4);
  for (const Case& c :
       {Case{IdForm::kEntries, 0, 0}, Case{IdForm::kEntries, 1, 4}}) {
    ExpectSameRows(layout, c, RandomIds(layout, c, rng));
  }
}

}  // namespace
}  // namespace engram
