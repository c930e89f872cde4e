#include "server/lookup_request.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/lookup_plan.h"
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
  int64_t num_ids;  // none: PlanLookup says what to set
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
  const int requested = static_cast<int>(req.output_dtype());
  if (requested != 0 && !ValidDTypeValue(requested)) {
    return absl::InvalidArgumentError(
        absl::StrCat("output_dtype ", requested, " is not a known DType"));
  }
  LookupArgs args;
  args.layer_id = req.layer_id();
  args.num_ids = num_ids;
  args.shape = {req.shape().data(), static_cast<size_t>(req.shape_size())};
  if (requested != 0) {
    args.output_dtype = DTypeFromProto(static_cast<v1::DType>(requested));
  }
  args.as_values = req.as_values();
  switch (req.id_form()) {
    case v1::ID_FORM_PER_HEAD:
      break;
    case v1::ID_FORM_FUSED:
      args.id_form = IdForm::kFused;
      break;
    case v1::ID_FORM_ENTRIES:
      args.id_form = IdForm::kEntries;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("id_form ", static_cast<int>(req.id_form()),
                       " is not a known IdForm"));
  }
  args.head_begin = req.head_begin();
  args.head_end = req.head_end();
  args.max_rows = limits.max_lookup_rows;
  args.max_rows_flag = "--max_lookup_rows";
  // 64 bytes covers the response's shape/dtype framing.
  args.max_out_bytes = limits.max_message_bytes - 64;
  args.max_out_bytes_flag = "--max_message_bytes";
  absl::StatusOr<LookupPlan> plan = PlanLookup(layout, args);
  if (!plan.ok()) return plan.status();
  call->shape = plan->shape;
  call->out_dtype = plan->out_dtype;
  call->out_dim = static_cast<int64_t>(plan->dim);
  call->dequantizes = plan->dequantizes();
  call->out_row_bytes = plan->out_row_bytes;
  call->out_shape = plan->OutShape();
  if (absl::Status s = ResolveIds(layout, *plan, call->ids, &call->resolved);
      !s.ok()) {
    return s;
  }
  if (!plan->plain) {
    call->ids = call->resolved.rows.data();
    if (!call->resolved.heads.empty())
      call->heads = call->resolved.heads.data();
  }
  return absl::OkStatus();
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
