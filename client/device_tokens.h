// The token side of device lookups (DeviceLookupRequest::tokens): a layer's
// model hash on one CUDA device. Internal to engram::client_gpu.
#ifndef ENGRAM_CLIENT_DEVICE_TOKENS_H_
#define ENGRAM_CLIENT_DEVICE_TOKENS_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/token_lookups.h"
#include "common/layout.h"
#include "kernels/gpu_handles.h"
#include "kernels/token_hash.h"

namespace engram {

// One model hash of a layer as the gather kernels use it: the hasher (for
// checks and error messages), its token map copied to the device, and the
// launch arguments that do not depend on the tokens. Immutable once made.
// A launch (or a captured graph) points at the token map, so the owner
// keeps it until no launch can read it: until the layer's state on the
// device ends, after a device synchronize, with its device current.
class DeviceTokenModel {
 public:
  // Asks the server over `channel` for `layer_id`'s model (the TokenModel
  // call) and copies its token map to the current device.
  static absl::StatusOr<std::unique_ptr<DeviceTokenModel>> Fetch(
      const std::shared_ptr<grpc::Channel>& channel, int64_t layer_id,
      absl::Duration timeout);

  uint64_t token_model() const { return model_.token_model; }
  // (N - 1) * H: the tables, and ids per token.
  int ids_per_position() const { return model_.hasher->ids_per_position(); }
  // N - 1: the history a sequence may carry.
  int max_history() const { return model_.hasher->config().max_ngram - 1; }
  // FAILED_PRECONDITION unless `layout` (of layer `layer_id`) is what this
  // model addresses: one table per id of a token, of the hash's sizes.
  absl::Status CheckLayout(int64_t layer_id, const LayerLayout& layout) const;
  // The kernel's arguments for `t`, reading the tokens and history at
  // `tokens` and `history` (device-readable copies of t's, or t's own).
  gpu::TokenHashArgs Args(const DeviceTokens& t, const int64_t* tokens,
                          const int64_t* history) const;
  // Why a launch found a token outside the token map: `t`'s tokens (host
  // copies) checked here, in the words of the server's LookupTokens.
  absl::Status ExplainBadToken(int64_t layer_id, const DeviceTokens& t,
                               std::span<const int64_t> tokens,
                               std::span<const int64_t> history) const;

 private:
  DeviceTokenModel() = default;

  LayerTokenModel model_;
  gpu::DeviceMemory<int64_t> token_map_;
  gpu::TokenHashArgs base_;  // everything but the tokens
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_TOKENS_H_
