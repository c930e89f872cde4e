// CPU row gather: ids [B, L, H] -> rows [B, L, H, D], with dtype conversion.
#ifndef ENGRAM_STORE_GATHER_H_
#define ENGRAM_STORE_GATHER_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "common/lookup_plan.h"
#include "common/thread_pool.h"
#include "store/layer.h"

namespace engram {

// Writes rows [begin, end) of the flat [B*L*H] output: output row i is
// row ids.rows[i] of its head converted to `out_dtype`. `out` points at row
// 0. Ids must already be validated (ResolveIds) and
// CanConvert(layout.dtype, out_dtype) must hold.
void GatherRows(const Layer& layer, RowIds ids, int64_t begin, int64_t end,
                DType out_dtype, uint8_t* out);

// Copies row rows[j] of head heads[j] (stored dtype) to out + j * row_bytes
// for j < n: the rows a peer asks a shard for. Validated by the caller.
void GatherRowsAt(const Layer& layer, const int32_t* heads, const int64_t* rows,
                  int64_t n, uint8_t* out);

// Rows below this count are gathered on the calling thread: splitting them
// costs more than it saves.
inline constexpr int64_t kParallelGatherMinRows = 8192;

// Gathers all `num_ids` rows, split across `pool` when the request is big,
// and calls `done` exactly once, on whichever thread finished last. `layer`,
// `ids` and `out` must stay valid until `done` runs. Never blocks.
void GatherAsync(ThreadPool* pool, const Layer& layer, RowIds ids,
                 int64_t num_ids, DType out_dtype, uint8_t* out,
                 std::function<void()> done);

// Synchronous convenience form of GatherAsync (waits for the parts).
void GatherParallel(ThreadPool* pool, const Layer& layer, RowIds ids,
                    int64_t num_ids, DType out_dtype, uint8_t* out);

}  // namespace engram

#endif  // ENGRAM_STORE_GATHER_H_
