// Token lookups of a routed client (direct reads, cluster): the client
// hashes token ids with the layer's model itself and reads the rows from
// their owners, so a co-located caller's LookupTokens costs a direct read,
// not a round trip. Internal to the client library.
#ifndef ENGRAM_CLIENT_TOKEN_LOOKUPS_H_
#define ENGRAM_CLIENT_TOKEN_LOOKUPS_H_

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <span>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cluster_router.h"
#include "common/dtype.h"
#include "common/mutex.h"
#include "hash/engram_hash.h"

namespace engram {

// A served layer's model hash as a TokenModel answer gives it: the hasher,
// which of the model's Engram layers addresses the served layer, and what
// ids hashed with it mean (EngramHasher::TokenModel).
struct LayerTokenModel {
  std::shared_ptr<const EngramHasher> hasher;
  int64_t engram_layer = 0;
  uint64_t token_model = 0;
};
// Builds the hasher of a TokenModel answer that names a model
// (token_model != 0) and checks it hashes as the server's does
// (DATA_LOSS otherwise).
absl::StatusOr<LayerTokenModel> ParseTokenModel(
    int64_t layer_id, const internal::v1::TokenModelResponse& reply);

// Caches each layer's model hash (fetched once with the peer TokenModel
// call; layers of one model share one hasher) and runs token lookups
// through a ClusterRouter it borrows. Every read carries the model's token
// model id, so an owner whose layer was populated again, or loaded with
// another model, refuses the rows instead of serving what other ids mean;
// the cache then fetches the layer's model once more and retries once.
// Thread-safe.
class RoutedTokenLookups {
 public:
  RoutedTokenLookups(ClusterRouter* router, absl::Duration timeout);

  // As Client::LookupTokens (arguments checked by the caller).
  absl::Status Lookup(std::span<const int64_t> layer_ids,
                      std::span<const int64_t> tokens, int64_t batch,
                      std::span<const int64_t> history,
                      std::span<const std::span<uint8_t>> outputs,
                      std::optional<DType> output_dtype);

 private:
  using Model = LayerTokenModel;
  // The cached model of `layer_id`, fetched when missing.
  absl::StatusOr<Model> Get(int64_t layer_id);
  absl::StatusOr<Model> Fetch(int64_t layer_id);
  void Forget(int64_t layer_id, uint64_t token_model);
  // One layer: hashes, then starts its read through the router.
  std::future<absl::Status> Start(int64_t layer_id, const Model& model,
                                  std::span<const int64_t> tokens,
                                  int64_t batch,
                                  std::span<const int64_t> history,
                                  std::span<uint8_t> output,
                                  std::optional<DType> output_dtype);

  ClusterRouter* const router_;
  const absl::Duration timeout_;
  Mutex mu_;
  std::map<int64_t, Model> by_layer_ ABSL_GUARDED_BY(mu_);
  // By EngramHasher::fingerprint(): one hasher per model.
  std::map<uint64_t, std::weak_ptr<const EngramHasher>> hashers_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_TOKEN_LOOKUPS_H_
