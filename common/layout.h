// Layer layouts and every invariant of the data contract (docs/design.md §2).
#ifndef ENGRAM_COMMON_LAYOUT_H_
#define ENGRAM_COMMON_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace engram {

// Rows [begin, end) of one head table.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const RowRange&) const = default;
};

// Shape of one layer: a table [N_h, D] per head h, elements of `dtype`.
// A plain value type.
struct LayerLayout {
  std::vector<int64_t> table_vocab_sizes;  // N_h per head
  int64_t embedding_dim = 0;               // D
  DType dtype = DType::kFloat32;

  int num_heads() const { return static_cast<int>(table_vocab_sizes.size()); }
  size_t row_bytes() const {
    return static_cast<size_t>(embedding_dim) * DTypeSize(dtype);
  }
  size_t table_bytes(int head) const {
    return static_cast<size_t>(table_vocab_sizes[head]) * row_bytes();
  }
  size_t total_bytes() const;
};

// Upper bounds that keep sizes far from int64 overflow; a layout past them
// is rejected as INVALID_ARGUMENT.
inline constexpr int kMaxHeads = 4096;
inline constexpr int64_t kMaxEmbeddingDim = int64_t{1} << 20;
inline constexpr int64_t kMaxTableRows = int64_t{1} << 40;

// INVALID_ARGUMENT naming the broken invariant, or OK.
absl::Status ValidateLayout(const LayerLayout& layout);

// The store key of table `head` of `layer_id`: engram:l{layer}:h{head}.
std::string StoreKey(int64_t layer_id, int head);

// Logical shape [B, L, H] of a lookup.
struct LookupShape {
  int64_t batch = 0;
  int64_t length = 0;
  int64_t heads = 0;
  int64_t num_ids() const { return batch * length * heads; }
};

// Checks that `shape` is [B, L, H] with B, L >= 1, H equal to the layer's
// head count and B*L*H equal to `num_ids`, and returns it parsed.
absl::Status ValidateLookupShape(const LayerLayout& layout,
                                 std::span<const int64_t> shape,
                                 int64_t num_ids, LookupShape* out);

// Checks 0 <= ids[i] < N_{i mod H} for every id; the error names the
// position [b, l, h], the value and the table size.
absl::Status ValidateRowIds(const LayerLayout& layout, const LookupShape& shape,
                            const int64_t* ids);

}  // namespace engram

#endif  // ENGRAM_COMMON_LAYOUT_H_
