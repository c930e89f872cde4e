// Which served layers can be looked up by token ids: the Engram hash of
// the model each came from (a load manifest's "model" section) and which
// Engram layer of that model it is.
#ifndef ENGRAM_SERVER_TOKEN_HASHES_H_
#define ENGRAM_SERVER_TOKEN_HASHES_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "checkpoint/manifest.h"
#include "common/mutex.h"
#include "hash/engram_hash.h"
#include "store/layer.h"

namespace engram {

// Owns the hashers; thread-safe (LookupTokens reads while loads register).
class TokenHashes {
 public:
  struct Entry {
    std::shared_ptr<const EngramHasher> hasher;
    int64_t engram_layer = 0;
    // The layer version the model came with (0: not known yet); a layer
    // populated or replaced since, without a model, is another version.
    uint64_t layer_version = 0;
  };
  // The served layers a manifest's model covers, with its hasher: reads
  // config.json and the token map, maps every Engram layer of the model to
  // its manifest layer (model.engram_layers, else the same id) and checks
  // that layer's table sizes are the hash's primes. INVALID_ARGUMENT naming
  // the layer and both sizes; nothing is registered yet.
  static absl::StatusOr<std::map<int64_t, Entry>> Prepare(
      const checkpoint::LoadManifest& manifest);
  // Makes `entries` (from Prepare) answer token lookups, replacing what
  // those layer ids had; each is tied to its layer's version in `served`
  // (the layers the load brought in or kept).
  void Register(const std::map<int64_t, Entry>& entries,
                const std::vector<std::shared_ptr<const Layer>>& served);
  // The hash of served layer `layer_id`, if it has one. (Callers check the
  // layer's current version and tables against the entry: a layer
  // populated again is refused, not misread.)
  std::optional<Entry> Find(int64_t layer_id) const;
  // OK when `entry` still describes `layer` (the layer version the model
  // came with, the tables its hash addresses); FAILED_PRECONDITION naming
  // both versions, or the tables, otherwise.
  static absl::Status CheckCurrent(const Entry& entry, const Layer& layer);
  // The served layer's entry when it is current: FAILED_PRECONDITION when
  // it has no model ("has no model hash") or CheckCurrent fails.
  absl::StatusOr<Entry> FindCurrent(const Layer& layer) const;
  // What `layer`'s ids mean to token lookups: its model's
  // EngramHasher::TokenModel when current, kStaleTokenModel when the layer
  // changed since, 0 when it has no model here.
  uint64_t TokenModelOf(const Layer& layer) const;
  // Called (outside the lock) with each layer id Register gave a model.
  // Set once, before any Register.
  void SetChangeListener(std::function<void(int64_t)> listener);

 private:
  mutable Mutex mu_;
  std::map<int64_t, Entry> by_layer_ ABSL_GUARDED_BY(mu_);
  std::function<void(int64_t)> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_SERVER_TOKEN_HASHES_H_
