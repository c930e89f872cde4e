// The checks every Lookup request passes before a row is read (shared by
// the service and the request fuzzer, fuzz/lookup_request_fuzz.cc).
#ifndef ENGRAM_SERVER_LOOKUP_REQUEST_H_
#define ENGRAM_SERVER_LOOKUP_REQUEST_H_

#include <chrono>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/layout.h"
#include "engram/v1/engram.pb.h"
#include "server/engram_service.h"
#include "store/layer_registry.h"

namespace engram {

// One Lookup between parse and Finish. Holds the layer so a concurrent
// Remove cannot free the tables under the gather.
struct LookupCall {
  v1::LookupRequest request;
  std::shared_ptr<const Layer> layer;
  LookupShape shape;
  const int64_t* ids = nullptr;
  std::vector<int64_t> ids_copy;  // only for ids that must be realigned
  DType out_dtype = DType::kFloat32;
  size_t out_row_bytes = 0;
  std::chrono::steady_clock::time_point start;
};

// Resolves the layer and checks everything about `call->request` (ids,
// shape, dtype, limits) before any row is read; fills the rest of `call`.
absl::Status PrepareLookup(const LayerRegistry& layers,
                           const ServiceLimits& limits, LookupCall* call);

}  // namespace engram

#endif  // ENGRAM_SERVER_LOOKUP_REQUEST_H_
