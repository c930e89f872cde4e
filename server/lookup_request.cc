#include "server/lookup_request.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace engram {
namespace {

bool ValidDTypeValue(int v) { return v >= 1 && v <= 4; }

}  // namespace

absl::Status PrepareLookup(const LayerRegistry& layers,
                           const ServiceLimits& limits, LookupCall* call) {
  const v1::LookupRequest& req = call->request;
  call->layer = layers.Find(req.layer_id());
  if (call->layer == nullptr) {
    // A shard recovering the layer coordinates with its layout alone.
    if (auto recovering = layers.FindRecovering(req.layer_id())) {
      call->layer = recovering->placeholder();
    }
  }
  if (call->layer == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("layer ", req.layer_id(), " not found"));
  }
  const LayerLayout& layout = call->layer->layout();
  const bool has_bytes = !req.row_ids().empty();
  const bool has_list = req.row_ids_list_size() > 0;
  if (has_bytes && has_list) {
    return absl::InvalidArgumentError(
        "set exactly one of row_ids (int64 little-endian bytes) and "
        "row_ids_list; both are set");
  }
  if (!has_bytes && !has_list) {
    return absl::InvalidArgumentError(
        "no row ids: set row_ids (int64 little-endian bytes) or row_ids_list");
  }
  int64_t num_ids;
  if (has_bytes) {
    const std::string& bytes = req.row_ids();
    if (bytes.size() % sizeof(int64_t) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("row_ids has ", bytes.size(),
                       " bytes, not a multiple of 8 (int64 little-endian)"));
    }
    num_ids = static_cast<int64_t>(bytes.size() / sizeof(int64_t));
    if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(int64_t) == 0) {
      call->ids = reinterpret_cast<const int64_t*>(bytes.data());
    } else {
      call->ids_copy.resize(num_ids);
      std::memcpy(call->ids_copy.data(), bytes.data(), bytes.size());
      call->ids = call->ids_copy.data();
    }
  } else {
    num_ids = req.row_ids_list_size();
    call->ids = req.row_ids_list().data();
  }
  if (absl::Status s = ValidateLookupShape(
          layout, {req.shape().data(), static_cast<size_t>(req.shape_size())},
          num_ids, &call->shape);
      !s.ok()) {
    return s;
  }
  if (num_ids > limits.max_lookup_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("lookup asks for ", num_ids, " rows; the limit is ",
                     limits.max_lookup_rows, " (--max_lookup_rows)"));
  }
  const int requested = static_cast<int>(req.output_dtype());
  if (requested != 0 && !ValidDTypeValue(requested)) {
    return absl::InvalidArgumentError(
        absl::StrCat("output_dtype ", requested, " is not a known DType"));
  }
  call->out_dtype = requested == 0
                        ? layout.dtype
                        : DTypeFromProto(static_cast<v1::DType>(requested));
  if (!CanConvert(layout.dtype, call->out_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output_dtype ", DTypeName(call->out_dtype),
        " cannot be produced from ", DTypeName(layout.dtype),
        " rows; only float layers convert (float32/bfloat16/float16)"));
  }
  if (req.as_values() && !IsFloatDType(layout.dtype)) {
    return absl::InvalidArgumentError(
        "as_values needs a float layer; this layer holds opaque uint8 rows");
  }
  call->out_row_bytes =
      static_cast<size_t>(layout.embedding_dim) *
      (req.as_values() ? sizeof(float) : DTypeSize(call->out_dtype));
  const uint64_t out_bytes =
      static_cast<uint64_t>(num_ids) * call->out_row_bytes;
  // 64 bytes covers the response's shape/dtype framing.
  if (out_bytes + 64 > static_cast<uint64_t>(limits.max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "lookup response would be ", out_bytes, " bytes; the limit is ",
        limits.max_message_bytes, " (--max_message_bytes); split the lookup"));
  }
  return ValidateRowIds(layout, call->shape, call->ids);
}

absl::Status CheckGather(const internal::v1::GatherRequest& request,
                         const Layer& layer, const Placement& placement,
                         int self, int64_t max_rows,
                         int64_t max_message_bytes) {
  const LayerLayout& layout = layer.layout();
  const int n = request.row_ids_size();
  if (request.heads_size() != n) {
    return absl::InvalidArgumentError("heads and row_ids differ in length");
  }
  // Sized before anything is allocated: a small request must not make a
  // large response.
  const uint64_t data_bytes = static_cast<uint64_t>(n) * layout.row_bytes();
  if (n > max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("gather asks for ", n, " rows; the limit is ", max_rows,
                     " (--max_lookup_rows)"));
  }
  if (data_bytes + 16 > static_cast<uint64_t>(max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "gather response would be ", data_bytes, " bytes; the limit is ",
        max_message_bytes, " (--max_message_bytes)"));
  }
  for (int i = 0; i < n; ++i) {
    const int h = request.heads(i);
    const int64_t id = request.row_ids(i);
    if (h < 0 || h >= layout.num_heads() || id < 0 ||
        id >= layout.table_vocab_sizes[h] ||
        !placement.Owns(self, layer.id(), h, layout.table_vocab_sizes[h], id)) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", self, " does not hold row ", id, " of head ",
                       h, " of layer ", layer.id()));
    }
  }
  return absl::OkStatus();
}

}  // namespace engram
