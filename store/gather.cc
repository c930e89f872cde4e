#include "store/gather.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>

#include "common/lookup_plan.h"

namespace engram {
namespace {

// Rows are fetched from random places; prefetching a few ids ahead overlaps
// the cache misses of neighbouring rows.
constexpr int64_t kPrefetchDistance = 8;

// glibc's memcpy beats fixed-size inline copies for 128-512 byte rows here
// (measured with bench/gather_bench), so rows are copied with a runtime size.
void CopyRows(const uint8_t* const* tables, int64_t heads, size_t row_bytes,
              const int64_t* ids, int64_t begin, int64_t end, uint8_t* out) {
  for (int64_t i = begin; i < end; ++i) {
    if (i + kPrefetchDistance < end) {
      int64_t j = i + kPrefetchDistance;
      __builtin_prefetch(tables[j % heads] + ids[j] * row_bytes);
    }
    std::memcpy(out + i * row_bytes, tables[i % heads] + ids[i] * row_bytes,
                row_bytes);
  }
}

}  // namespace

void GatherRowsAt(const Layer& layer, const int32_t* heads, const int64_t* rows,
                  int64_t n, uint8_t* out) {
  const size_t row_bytes = layer.layout().row_bytes();
  const uint8_t* const* tables = layer.table_ptrs();
  for (int64_t j = 0; j < n; ++j) {
    std::memcpy(out + j * row_bytes, tables[heads[j]] + rows[j] * row_bytes,
                row_bytes);
  }
}

// CopyRows for rows that name their heads.
void CopyRowsAt(const uint8_t* const* tables, size_t row_bytes,
                const int32_t* heads, const int64_t* ids, int64_t begin,
                int64_t end, uint8_t* out) {
  for (int64_t i = begin; i < end; ++i) {
    if (i + kPrefetchDistance < end) {
      int64_t j = i + kPrefetchDistance;
      __builtin_prefetch(tables[heads[j]] + ids[j] * row_bytes);
    }
    std::memcpy(out + i * row_bytes, tables[heads[i]] + ids[i] * row_bytes,
                row_bytes);
  }
}

void GatherRows(const Layer& layer, RowIds ids, int64_t begin, int64_t end,
                DType out_dtype, uint8_t* out) {
  const LayerLayout& layout = layer.layout();
  const int64_t heads = layout.num_heads();
  const size_t row_bytes = layout.row_bytes();
  if (out_dtype == layout.dtype) {
    if (ids.heads != nullptr) {
      CopyRowsAt(layer.table_ptrs(), row_bytes, ids.heads, ids.rows, begin, end,
                 out);
    } else {
      CopyRows(layer.table_ptrs(), heads, row_bytes, ids.rows, begin, end, out);
    }
    return;
  }
  const LookupPlan plan = RowPlan(layout, out_dtype);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t h = ids.heads != nullptr ? ids.heads[i] : i % heads;
    plan.PutRow(layer.table(h) + ids.rows[i] * row_bytes,
                out + i * plan.out_row_bytes);
  }
}

void GatherAsync(ThreadPool* pool, const Layer& layer, RowIds ids,
                 int64_t num_ids, DType out_dtype, uint8_t* out,
                 std::function<void()> done) {
  const int64_t parts = std::min<int64_t>(pool == nullptr ? 1 : pool->size(),
                                          num_ids / kParallelGatherMinRows);
  if (parts <= 1) {
    GatherRows(layer, ids, 0, num_ids, out_dtype, out);
    done();
    return;
  }
  struct Join {
    std::atomic<int64_t> remaining;
    std::function<void()> done;
  };
  auto join = std::make_shared<Join>();
  join->remaining.store(parts, std::memory_order_relaxed);
  join->done = std::move(done);
  const int64_t per_part = (num_ids + parts - 1) / parts;
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t begin = p * per_part;
    const int64_t end = std::min(num_ids, begin + per_part);
    pool->Submit([&layer, ids, begin, end, out_dtype, out, join] {
      GatherRows(layer, ids, begin, end, out_dtype, out);
      if (join->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        join->done();
      }
    });
  }
}

void GatherParallel(ThreadPool* pool, const Layer& layer, RowIds ids,
                    int64_t num_ids, DType out_dtype, uint8_t* out) {
  std::promise<void> finished;
  GatherAsync(pool, layer, ids, num_ids, out_dtype, out,
              [&finished] { finished.set_value(); });
  finished.get_future().wait();
}

}  // namespace engram
