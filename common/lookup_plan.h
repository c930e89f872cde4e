// The one place a lookup's request is checked against its layer and turned
// into what it returns (shape, output dtype, bytes), and the one row op
// that lands a stored row in the output (a copy, or a dtype conversion).
// PlanLookup serves the server's Lookup, the cluster router (direct reads)
// and device lookups, so their messages agree; the row op serves the CPU
// gather, peer reads (ShardRead) and the coordinator's own rows.
#ifndef ENGRAM_COMMON_LOOKUP_PLAN_H_
#define ENGRAM_COMMON_LOOKUP_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/layout.h"

namespace engram {

// A lookup as its path received it. Plain value; spans are borrowed.
struct LookupArgs {
  int64_t layer_id = 0;  // for messages
  int64_t num_ids = 0;   // ids given
  // [B, L, H] (H: the heads looked up); empty: [num_ids / H, 1, H]. [n] or
  // empty for kEntries.
  std::span<const int64_t> shape;
  IdForm id_form = IdForm::kPerHead;
  // Heads [head_begin, head_end) only (a tensor-parallel rank's slice):
  // column c is head head_begin + c; entries must fall in the slice's fused
  // range. head_end 0: to the last head.
  int64_t head_begin = 0;
  int64_t head_end = 0;
  std::optional<DType> output_dtype;  // unset: the layer's dtype
  bool as_values = false;             // float32 values (the RPC's as_values)
  // The caller's output buffer in bytes, when it brings one: it must hold
  // exactly the rows.
  std::optional<uint64_t> out_bytes;
  // Limits of the path (0: none). Past them: RESOURCE_EXHAUSTED.
  int64_t max_rows = 0;
  int64_t max_out_bytes = 0;
  const char* max_rows_flag = "";  // named in the message
  const char* max_out_bytes_flag = "";
};

// What a checked lookup returns and how each row lands. Plain value.
struct LookupPlan {
  LookupShape shape;  // kEntries: [n, 1, 1]
  IdForm id_form = IdForm::kPerHead;
  int64_t head_begin = 0;
  int64_t head_end = 0;  // resolved: never 0
  // The ids name rows as the gathers read them (column h = head h): no
  // ResolveIds pass is needed.
  bool plain = true;
  DType stored_dtype = DType::kFloat32;
  DType out_dtype = DType::kFloat32;  // kFloat32 for as_values
  size_t dim = 0;  // values per output row (W when dequantizing)
  size_t stored_row_bytes = 0;
  size_t out_row_bytes = 0;
  uint64_t out_bytes = 0;
  // Set when a quantized layer's rows are returned as values: the block
  // size of its scales (dim weights, then dim / block scale bytes).
  size_t dequant_block = 0;

  bool dequantizes() const { return dequant_block != 0; }
  // The returned rows' shape: [B, L, H, D], or [n, D] for entries.
  std::vector<int64_t> OutShape() const;
  bool converts() const { return out_dtype != stored_dtype; }
  // Lands one stored row at `out` (out_row_bytes): a copy, a conversion or
  // a dequantization.
  void PutRow(const uint8_t* stored, uint8_t* out) const {
    if (dequantizes()) {
      DequantizeFp8Row(stored, dim, dequant_block, out, out_dtype);
    } else if (converts()) {
      ConvertElements(stored, stored_dtype, out, out_dtype, dim);
    } else {
      std::memcpy(out, stored, out_row_bytes);
    }
  }
};

// Checks `args` against `layout` (ids present, shape, dtype conversion,
// buffer size, limits) before any row is read. INVALID_ARGUMENT or
// RESOURCE_EXHAUSTED naming what is wrong; the ids themselves are checked
// by ValidateRowIds (on the GPU by the gather).
absl::StatusOr<LookupPlan> PlanLookup(const LayerLayout& layout,
                                      const LookupArgs& args);

// A lookup's ids as the gathers read them: row `rows[i]` of head
// `heads[i]` (heads empty: head i mod H). Filled by ResolveIds for a plan
// that is not plain.
struct ResolvedIds {
  std::vector<int32_t> heads;
  std::vector<int64_t> rows;
};

// The rows a gather reads: row rows[i] of head heads[i], or of head i mod H
// when heads is null (ids [B, L, H]). Borrowed pointers.
struct RowIds {
  RowIds(const int64_t* rows, const int32_t* heads = nullptr)  // NOLINT
      : rows(rows), heads(heads) {}
  const int64_t* rows;
  const int32_t* heads;
  int64_t head(int64_t i, int64_t num_heads) const {
    return heads != nullptr ? heads[i] : i % num_heads;
  }
};

// Checks every id of a planned lookup against its layer and, for a plan
// that is not plain, translates them into `resolved` (fused ids lose their
// head's offset; slices and entries name their heads). INVALID_ARGUMENT
// naming the first bad id, its position (and column) and the range it had
// to fall in.
absl::Status ResolveIds(const LayerLayout& layout, const LookupPlan& plan,
                        const int64_t* ids, ResolvedIds* resolved);

// The plan of rows read for another lookup (peer reads, cluster routing):
// no shape, only the conversion (a float `out_dtype` of a quantized layer
// dequantizes).
LookupPlan RowPlan(const LayerLayout& layout, DType out_dtype);

}  // namespace engram

#endif  // ENGRAM_COMMON_LOOKUP_PLAN_H_
