#include "common/lookup_plan.h"

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
  LookupShape shape;
  if (args.shape.empty()) {
    const int64_t heads = layout.num_heads();
    if (heads <= 0 || args.num_ids % heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(args.num_ids, " ids are not a multiple of layer ",
                       args.layer_id, "'s ", heads, " heads"));
    }
    shape = {args.num_ids / heads, 1, heads};
  } else if (absl::Status s =
                 ValidateLookupShape(layout, args.shape, args.num_ids, &shape);
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

}  // namespace engram
