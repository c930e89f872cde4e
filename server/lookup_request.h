// The checks every Lookup and peer Gather request passes before a row is
// read (shared by the services and the request fuzzers in fuzz/).
#ifndef ENGRAM_SERVER_LOOKUP_REQUEST_H_
#define ENGRAM_SERVER_LOOKUP_REQUEST_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cluster/placement.h"
#include "common/layout.h"
#include "common/lookup_plan.h"
#include "engram/internal/v1/peer.pb.h"
#include "engram/v1/engram.pb.h"
#include "store/layer_registry.h"

namespace engram {

// The service's limits and settings (flags of the same names).
struct ServiceLimits {
  int64_t max_lookup_rows = int64_t{1} << 22;
  int64_t max_message_bytes = int64_t{256} << 20;
  bool pin_memory = true;
  int64_t gpu_min_rows = 16384;  // smaller lookups stay on the CPU
  std::string data_dir;          // --data_dir ("" keeps tables in memory)
};

// The most lookups one LookupMany call may carry.
inline constexpr int kMaxLookupsPerCall = 256;

// One Lookup between parse and Finish. Holds the layer so a concurrent
// Remove cannot free the tables under the gather.
struct LookupCall {
  v1::LookupRequest request;
  std::shared_ptr<const Layer> layer;
  LookupShape shape;
  std::vector<int64_t> out_shape;  // the response's
  // The rows to gather: the request's ids as given, or as ResolveIds
  // translated them (fused, head slices, entries: then heads is set).
  const int64_t* ids = nullptr;
  const int32_t* heads = nullptr;
  std::vector<int64_t> ids_copy;  // only for ids that must be realigned
  ResolvedIds resolved;
  DType out_dtype = DType::kFloat32;
  int64_t out_dim = 0;  // values per returned row (W when dequantizing)
  bool dequantizes = false;
  size_t out_row_bytes = 0;
  std::chrono::steady_clock::time_point start;
  // LookupTokens: the model the ids were hashed with (0: plain ids); other
  // shards serve their rows only while their layer has it.
  uint64_t token_model = 0;
};

// Resolves the layer and checks everything about `call->request` (ids,
// shape, dtype, limits) before any row is read; fills the rest of `call`.
absl::Status PrepareLookup(const LayerRegistry& layers,
                           const ServiceLimits& limits, LookupCall* call);

// Checks a peer Gather of `layer`'s rows on shard `self`: heads and ids
// pair up and are in range, this shard owns every row, and the response
// fits the limits (RESOURCE_EXHAUSTED before anything is allocated).
absl::Status CheckGather(const internal::v1::GatherRequest& request,
                         const Layer& layer, const Placement& placement,
                         int self, int64_t max_rows, int64_t max_message_bytes);

}  // namespace engram

#endif  // ENGRAM_SERVER_LOOKUP_REQUEST_H_
