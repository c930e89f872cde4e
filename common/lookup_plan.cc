#include "common/lookup_plan.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace engram {

LookupPlan RowPlan(const LayerLayout& layout, DType out_dtype) {
  LookupPlan plan;
  plan.stored_dtype = layout.dtype;
  plan.out_dtype = out_dtype;
  plan.dim = static_cast<size_t>(layout.embedding_dim);
  if (layout.quant.enabled() && IsFloatDType(out_dtype)) {
    plan.dim = static_cast<size_t>(layout.values_per_row());
    plan.dequant_block = static_cast<size_t>(layout.quant.block);
  }
  plan.stored_row_bytes = layout.row_bytes();
  plan.out_row_bytes = plan.dim * DTypeSize(out_dtype);
  return plan;
}

absl::StatusOr<LookupPlan> PlanLookup(const LayerLayout& layout,
                                      const LookupArgs& args) {
  if (args.num_ids <= 0) {
    return absl::InvalidArgumentError(
        "no row ids: set row_ids (int64 little-endian bytes) or row_ids_list");
  }
  const int64_t all_heads = layout.num_heads();
  const int64_t head_begin = args.head_begin;
  const int64_t head_end = args.head_end == 0 ? all_heads : args.head_end;
  if (head_begin < 0 || head_begin >= head_end || head_end > all_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("head slice [", head_begin, ", ", head_end,
                     ") is not a non-empty "
                     "range of layer ",
                     args.layer_id, "'s ", all_heads, " heads"));
  }
  LookupShape shape;
  if (args.id_form == IdForm::kEntries) {
    if (args.shape.size() > 1 ||
        (args.shape.size() == 1 && args.shape[0] != args.num_ids)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "entry lookups take shape [n] (or none) with n = the ", args.num_ids,
          " ids given; got rank ", args.shape.size()));
    }
    shape = {args.num_ids, 1, 1};
  } else if (args.shape.empty()) {
    const int64_t heads = head_end - head_begin;
    if (args.num_ids % heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(args.num_ids, " ids are not a multiple of the ", heads,
                       " heads looked up in layer ", args.layer_id));
    }
    shape = {args.num_ids / heads, 1, heads};
  } else if (absl::Status s = ValidateLookupShape(
                 head_end - head_begin, args.shape, args.num_ids, &shape);
             !s.ok()) {
    return s;
  }
  if (args.max_rows > 0 && args.num_ids > args.max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("lookup asks for ", args.num_ids, " rows; the limit is ",
                     args.max_rows, " (", args.max_rows_flag, ")"));
  }
  // The requested dtype must be producible even when as_values replaces it
  // with float32 values.
  const DType requested = args.output_dtype.value_or(layout.dtype);
  // A quantized layer gives its bytes, or values of any float dtype.
  const bool quantized = layout.quant.enabled();
  if (!quantized && !CanConvert(layout.dtype, requested)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output_dtype ", DTypeName(requested),
        " cannot be produced from layer ", args.layer_id, "'s ",
        DTypeName(layout.dtype),
        " rows; only float layers convert (float32/bfloat16/float16)"));
  }
  if (args.as_values && !IsFloatDType(layout.dtype) && !quantized) {
    return absl::InvalidArgumentError(
        absl::StrCat("as_values needs a float layer; layer ", args.layer_id,
                     " holds opaque uint8 rows"));
  }
  const DType out_dtype = args.as_values ? DType::kFloat32 : requested;
  LookupPlan plan = RowPlan(layout, out_dtype);
  plan.shape = shape;
  plan.id_form = args.id_form;
  plan.head_begin = head_begin;
  plan.head_end = head_end;
  plan.plain = args.id_form == IdForm::kPerHead && head_begin == 0 &&
               head_end == all_heads;
  plan.out_bytes = static_cast<uint64_t>(args.num_ids) * plan.out_row_bytes;
  if (args.out_bytes.has_value() && *args.out_bytes != plan.out_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("the output buffer holds ", *args.out_bytes, " bytes; ",
                     args.num_ids, " rows of ", plan.dim, " ",
                     DTypeName(out_dtype), " need ", plan.out_bytes));
  }
  if (args.max_out_bytes > 0 &&
      plan.out_bytes > static_cast<uint64_t>(args.max_out_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("lookup response would be ", plan.out_bytes,
                     " bytes; the limit is ", args.max_out_bytes, " (",
                     args.max_out_bytes_flag, "); split the lookup"));
  }
  return plan;
}

std::vector<int64_t> LookupPlan::OutShape() const {
  const int64_t d = static_cast<int64_t>(dim);
  if (id_form == IdForm::kEntries) return {shape.batch, d};
  return {shape.batch, shape.length, shape.heads, d};
}

namespace {

// "row_ids[b, l, c]" for flat position i of a [B, L, H] lookup.
std::string Position(const LookupShape& shape, int64_t i) {
  const int64_t c = i % shape.heads;
  return absl::StrCat("row_ids[", i / (shape.length * shape.heads), ", ",
                      (i / shape.heads) % shape.length, ", ", c, "]");
}

}  // namespace

absl::Status ResolveIds(const LayerLayout& layout, const LookupPlan& plan,
                        const int64_t* ids, ResolvedIds* resolved) {
  if (plan.plain) return ValidateRowIds(layout, plan.shape, ids);
  const std::vector<int64_t> offsets = FusedOffsets(layout);
  const int64_t n = plan.shape.num_ids();
  const int64_t h0 = plan.head_begin;
  const int64_t* sizes = layout.table_vocab_sizes.data();
  resolved->rows.resize(n);
  int64_t* rows = resolved->rows.data();
  if (plan.id_form == IdForm::kEntries) {
    resolved->heads.resize(n);
    int32_t* heads = resolved->heads.data();
    const int64_t lo = offsets[h0], hi = offsets[plan.head_end];
    const int64_t* first = offsets.data() + h0;
    const int64_t* last = offsets.data() + plan.head_end + 1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids[i];
      if (id < lo || id >= hi) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row_ids[", i, "] = ", id, " is outside the fused id range [", lo,
            ", ", hi, ") of heads [", h0, ", ", plan.head_end, ")"));
      }
      const int64_t h = std::upper_bound(first, last, id) - offsets.data() - 1;
      heads[i] = static_cast<int32_t>(h);
      rows[i] = id - offsets[h];
    }
    return absl::OkStatus();
  }
  const int64_t columns = plan.shape.heads;
  const bool fused = plan.id_form == IdForm::kFused;
  const bool sliced = h0 != 0 || plan.head_end != layout.num_heads();
  if (sliced) {
    resolved->heads.resize(n);
    for (int64_t i = 0; i < n; i += columns) {
      for (int64_t c = 0; c < columns; ++c)
        resolved->heads[i + c] = static_cast<int32_t>(h0 + c);
    }
  }
  bool bad = false;
  for (int64_t i = 0; i < n; i += columns) {
    for (int64_t c = 0; c < columns; ++c) {
      const int64_t h = h0 + c;
      const int64_t row = ids[i + c] - (fused ? offsets[h] : 0);
      bad |= static_cast<uint64_t>(row) >= static_cast<uint64_t>(sizes[h]);
      rows[i + c] = row;
    }
  }
  if (!bad) return absl::OkStatus();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = h0 + i % columns;
    if (rows[i] >= 0 && rows[i] < sizes[h]) continue;
    const int64_t lo = fused ? offsets[h] : 0;
    return absl::InvalidArgumentError(absl::StrCat(
        Position(plan.shape, i), " = ", ids[i], " is out of range: column ",
        i % columns, " is head ", h, ", whose ", fused ? "fused " : "",
        "ids are [", lo, ", ", lo + sizes[h], ")"));
  }
  return absl::OkStatus();
}

}  // namespace engram
