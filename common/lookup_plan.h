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

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/layout.h"

namespace engram {

// A lookup as its path received it. Plain value; spans are borrowed.
struct LookupArgs {
  int64_t layer_id = 0;               // for messages
  int64_t num_ids = 0;                // ids given
  std::span<const int64_t> shape;     // [B, L, H]; empty: [num_ids / H, 1, H]
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
  LookupShape shape;
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

// The plan of rows read for another lookup (peer reads, cluster routing):
// no shape, only the conversion (a float `out_dtype` of a quantized layer
// dequantizes).
LookupPlan RowPlan(const LayerLayout& layout, DType out_dtype);

}  // namespace engram

#endif  // ENGRAM_COMMON_LOOKUP_PLAN_H_
