#include "common/layout.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace engram {

size_t LayerLayout::total_bytes() const {
  size_t total = 0;
  for (int h = 0; h < num_heads(); ++h) total += table_bytes(h);
  return total;
}

absl::Status ValidateLayout(const LayerLayout& layout) {
  if (layout.table_vocab_sizes.empty()) {
    return absl::InvalidArgumentError(
        "table_vocab_sizes must name at least one head table");
  }
  if (layout.num_heads() > kMaxHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("table_vocab_sizes has ", layout.num_heads(),
                     " heads; at most ", kMaxHeads, " are supported"));
  }
  for (int h = 0; h < layout.num_heads(); ++h) {
    int64_t n = layout.table_vocab_sizes[h];
    if (n <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("table_vocab_sizes[", h, "] = ", n, " must be > 0"));
    }
    if (n > kMaxTableRows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "table_vocab_sizes[", h, "] = ", n, " exceeds ", kMaxTableRows));
    }
  }
  if (layout.embedding_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding_dim = ", layout.embedding_dim, " must be > 0"));
  }
  if (layout.embedding_dim > kMaxEmbeddingDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("embedding_dim = ", layout.embedding_dim, " exceeds ",
                     kMaxEmbeddingDim));
  }
  switch (layout.dtype) {
    case DType::kFloat32:
    case DType::kBFloat16:
    case DType::kFloat16:
    case DType::kUInt8:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", static_cast<int>(layout.dtype), " is not a known DType"));
  }
  switch (layout.quant.format) {
    case QuantFormat::kNone:
      if (layout.quant.block != 0) {
        return absl::InvalidArgumentError(
            "a quantization block without a quantization format");
      }
      return absl::OkStatus();
    case QuantFormat::kFp8E4M3Ue8m0:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("quantization format ",
                       static_cast<int>(layout.quant.format), " is not known"));
  }
  const int64_t block = layout.quant.block;
  if (block <= 0 || block > kMaxQuantBlock) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization block = ", block, " must be in [1, ",
                     kMaxQuantBlock, "]"));
  }
  if (layout.dtype != DType::kUInt8) {
    return absl::InvalidArgumentError(
        absl::StrCat("a quantized layer stores uint8 row bytes, not ",
                     DTypeName(layout.dtype)));
  }
  if (layout.embedding_dim % (block + 1) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "embedding_dim = ", layout.embedding_dim,
        " is not W weight bytes plus one scale byte per block of ", block,
        " (a multiple of ", block + 1, ", e.g. 264 = 256 + 8 for block 32)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Quant> QuantFromNames(absl::string_view format,
                                     absl::string_view scale, int64_t block) {
  if (format != "fp8_e4m3") {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization format \"", format.substr(0, 32),
                     "\" is not known (known: fp8_e4m3)"));
  }
  if (scale != "ue8m0") {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization scale \"", scale.substr(0, 32),
                     "\" is not known (fp8_e4m3 takes ue8m0)"));
  }
  if (block <= 0 || block > kMaxQuantBlock) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization block = ", block, " must be in [1, ",
                     kMaxQuantBlock, "]"));
  }
  return Quant{QuantFormat::kFp8E4M3Ue8m0, static_cast<int32_t>(block)};
}

const char* QuantFormatName(QuantFormat format) {
  return format == QuantFormat::kFp8E4M3Ue8m0 ? "fp8_e4m3" : "none";
}

const char* QuantScaleName(QuantFormat format) {
  return format == QuantFormat::kFp8E4M3Ue8m0 ? "ue8m0" : "none";
}

std::string StoreKey(int64_t layer_id, int head) {
  return absl::StrCat("engram:l", layer_id, ":h", head);
}

namespace {

// "[a, b, c]", with at most 8 dimensions spelled out: error messages stay
// short whatever shape a request claims.
std::string ShapeText(std::span<const int64_t> shape) {
  constexpr size_t kShown = 8;
  if (shape.size() <= kShown)
    return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kShown), ", "),
                      ", ... (", shape.size() - kShown, " more)]");
}

}  // namespace

std::vector<int64_t> FusedOffsets(const LayerLayout& layout) {
  std::vector<int64_t> offsets(layout.table_vocab_sizes.size() + 1, 0);
  for (size_t h = 0; h < layout.table_vocab_sizes.size(); ++h)
    offsets[h + 1] = offsets[h] + layout.table_vocab_sizes[h];
  return offsets;
}

absl::Status ValidateLookupShape(int64_t heads, std::span<const int64_t> shape,
                                 int64_t num_ids, LookupShape* out) {
  if (shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape must be [B, L, H] (rank 3); got rank ",
                     shape.size(), " ", ShapeText(shape)));
  }
  if (shape[0] <= 0 || shape[1] <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", ShapeText(shape), " must have B >= 1 and L >= 1"));
  }
  if (shape[2] != heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape H = ", shape[2], " must equal the ", heads,
                     " heads looked up (the layer's, or the head slice's)"));
  }
  // Guard the product against overflow before comparing with num_ids.
  const int64_t limit = int64_t{1} << 40;
  if (shape[0] > limit / shape[1] || shape[0] * shape[1] > limit / shape[2]) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeText(shape), " has too many elements"));
  }
  LookupShape parsed{shape[0], shape[1], shape[2]};
  if (parsed.num_ids() != num_ids) {
    return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeText(shape),
                                                   " needs ", parsed.num_ids(),
                                                   " row ids; got ", num_ids));
  }
  *out = parsed;
  return absl::OkStatus();
}

absl::Status ValidateRowIds(const LayerLayout& layout, const LookupShape& shape,
                            const int64_t* ids) {
  const int64_t heads = shape.heads;
  const int64_t n = shape.num_ids();
  const int64_t* sizes = layout.table_vocab_sizes.data();
  // Branch-light scan first; locate the offender only on failure.
  bool bad = false;
  for (int64_t i = 0; i < n; i += heads) {
    for (int64_t h = 0; h < heads; ++h) {
      bad |=
          static_cast<uint64_t>(ids[i + h]) >= static_cast<uint64_t>(sizes[h]);
    }
  }
  if (!bad) return absl::OkStatus();
  for (int64_t i = 0; i < n; ++i) {
    int64_t h = i % heads;
    int64_t id = ids[i];
    if (id < 0 || id >= sizes[h]) {
      int64_t b = i / (shape.length * heads);
      int64_t l = (i / heads) % shape.length;
      return absl::InvalidArgumentError(
          absl::StrCat("row_ids[", b, ", ", l, ", ", h, "] = ", id,
                       " is out of range: head ", h, " has ", sizes[h],
                       " rows (need 0 <= id < ", sizes[h], ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace engram
