// Layer layouts and every invariant of the data contract (docs/design.md §2).
#ifndef ENGRAM_COMMON_LAYOUT_H_
#define ENGRAM_COMMON_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace engram {

// Rows [begin, end) of one head table.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const RowRange&) const = default;
};

// One stored row to copy (row `row` of head table `head`) and where its
// row_bytes land: what every cluster and direct-read path moves.
struct RowCopy {
  int head = 0;
  int64_t row = 0;
  uint8_t* dst = nullptr;
};

// How a uint8 layer's row bytes encode numbers, when they do.
enum class QuantFormat : int32_t {
  kNone = 0,
  // DeepSeek's Engram rows: W FP8 E4M3 weight bytes, then one UE8M0 scale
  // byte per block of `block` weights (W = 256, block = 32: 264 bytes).
  // Value i = E4M3(w[i]) * 2^(scale[i / block] - 127), in float32.
  kFp8E4M3Ue8m0 = 1,
};

// A layer's quantization: none, or a format and its block size.
struct Quant {
  QuantFormat format = QuantFormat::kNone;
  int32_t block = 0;  // weights per scale byte
  bool enabled() const { return format != QuantFormat::kNone; }
  bool operator==(const Quant&) const = default;
};
inline constexpr int32_t kMaxQuantBlock = 1 << 16;

// Shape of one layer: a table [N_h, D] per head h, elements of `dtype`.
// A plain value type.
struct LayerLayout {
  std::vector<int64_t> table_vocab_sizes;  // N_h per head
  int64_t embedding_dim = 0;               // D
  DType dtype = DType::kFloat32;
  // With a format: uint8 rows of D = W + W / block bytes that lookups may
  // also return dequantized (W values of a float dtype).
  Quant quant{};

  // Values a row holds: D, or W for a quantized layer.
  int64_t values_per_row() const {
    return quant.enabled() ? embedding_dim / (quant.block + 1) * quant.block
                           : embedding_dim;
  }

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

// The spellings of load manifests, the API and the Python package:
// "fp8_e4m3" weights with "ue8m0" scales. INVALID_ARGUMENT for others.
absl::StatusOr<Quant> QuantFromNames(absl::string_view format,
                                     absl::string_view scale, int64_t block);
const char* QuantFormatName(QuantFormat format);  // "fp8_e4m3"
const char* QuantScaleName(QuantFormat format);   // "ue8m0"

// The store key of table `head` of `layer_id`: engram:l{layer}:h{head}.
std::string StoreKey(int64_t layer_id, int head);

// Logical shape [B, L, H] of a lookup.
// How a lookup's ids name rows.
enum class IdForm {
  // ids [B, L, H]: column h is a row of head h (0 <= id < N_h).
  kPerHead,
  // ids [B, L, H] in the layer's fused id space (head h's rows start at the
  // exclusive prefix sum of table_vocab_sizes): column h must fall in head
  // h's range. The ids engines' hash kernels emit.
  kFused,
  // ids [n], each any fused id (its head follows from the id); rows [n, D]
  // (SGLang's entry_gather).
  kEntries,
};

struct LookupShape {
  int64_t batch = 0;
  int64_t length = 0;
  int64_t heads = 0;
  int64_t num_ids() const { return batch * length * heads; }
};

// Checks that `shape` is [B, L, H] with B, L >= 1, H equal to `heads` (the
// layer's head count, or a head slice's) and B*L*H equal to `num_ids`, and
// returns it parsed.
absl::Status ValidateLookupShape(int64_t heads, std::span<const int64_t> shape,
                                 int64_t num_ids, LookupShape* out);

// Head h's first id in the layer's fused id space (the exclusive prefix sum
// of table_vocab_sizes); entry H is the total.
std::vector<int64_t> FusedOffsets(const LayerLayout& layout);

// Checks 0 <= ids[i] < N_{i mod H} for every id; the error names the
// position [b, l, h], the value and the table size.
absl::Status ValidateRowIds(const LayerLayout& layout, const LookupShape& shape,
                            const int64_t* ids);

}  // namespace engram

#endif  // ENGRAM_COMMON_LAYOUT_H_
