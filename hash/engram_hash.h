// DeepSeek's Engram n-gram hash: raw token ids in, the row ids of every
// Engram table out (per head, or in the layer's fused id space), as the
// model's reference computes them (../shared/ENGRAM_HASH.md has the
// algorithm; docs/tokens.md the contract). No gRPC, no CUDA: the server,
// the clients and engramctl share it.
#ifndef ENGRAM_HASH_ENGRAM_HASH_H_
#define ENGRAM_HASH_ENGRAM_HASH_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace engram {

// The `engram_*` keys of a model's config.json. Plain value.
struct EngramHashConfig {
  std::vector<int64_t> layer_ids;  // engram_layer_ids, in order
  int max_ngram = 0;               // N: orders 2..N are hashed
  int heads = 0;                   // H: tables per order
  // Base rows of each order 2..N (N - 1 entries; one engram_vocab_size
  // repeated, or the older per-order list).
  std::vector<int64_t> order_vocab;
  std::vector<int64_t> num_embeddings;  // per layer; empty: not checked
  int64_t pad_token_id = 0;             // raw id
  int64_t compressed_vocab = 0;         // V
  std::optional<int64_t> image_token_id;

  // Reads config.json: the keys under text_config, else at the top level.
  // INVALID_ARGUMENT naming a missing or malformed key.
  static absl::StatusOr<EngramHashConfig> FromJson(std::string_view text,
                                                   std::string_view what);
};

// What an owner exports for a layer whose model is stale there (populated
// again since without one): no token model matches it. 0 means the owner
// never learnt a model for the layer.
inline constexpr uint64_t kStaleTokenModel = ~uint64_t{0};

// One model's hash: its config, its token map (raw id -> compressed id)
// and, per Engram layer, the multipliers and table sizes derived from
// them. Immutable after Create; thread-safe.
class EngramHasher {
 public:
  // Derives the multipliers and primes and checks them: the token map's
  // distinct values must number compressed_vocab and each layer's primes
  // must sum to its num_embeddings (INVALID_ARGUMENT naming both numbers).
  static absl::StatusOr<EngramHasher> Create(EngramHashConfig config,
                                             std::vector<int64_t> token_map);
  // config.json plus the token map file: a 1-D int32/int64 .npy, or raw
  // little-endian int32 (.i32).
  static absl::StatusOr<EngramHasher> Load(const std::string& config_path,
                                           const std::string& token_map_path);

  const EngramHashConfig& config() const { return config_; }
  // (N - 1) * H: ids per position, order 2's heads first.
  int ids_per_position() const {
    return (config_.max_ngram - 1) * config_.heads;
  }
  // Table sizes of a layer, in id order; empty for an unknown layer id.
  std::span<const int64_t> table_sizes(int64_t layer_id) const;
  // mult[k] multiplies the token k positions back; empty when unknown.
  std::span<const int64_t> multipliers(int64_t layer_id) const;
  int64_t compressed_pad() const { return compressed_pad_; }
  // Identifies the model: equal for an equal config and token map (XXH3 of
  // both; never 0).
  uint64_t fingerprint() const { return fingerprint_; }
  static uint64_t Fingerprint(const EngramHashConfig& config,
                              std::span<const int64_t> token_map);
  // Identifies what `layer_id`'s ids mean: the model and the layer (never
  // 0 or kStaleTokenModel). A reader that hashed with it asks owners to serve
  // only rows of that meaning (docs/tokens.md "Direct reads and clusters").
  uint64_t TokenModel(int64_t layer_id) const;
  // The raw id -> compressed id map the model was created with.
  std::span<const int64_t> token_map() const { return token_map_; }

  // Hashes tokens [batch, T] (raw ids, row-major) of `layer_id` into out
  // [batch, T, ids_per_position()]. `history` [batch, h] (h <= N - 1, may
  // be 0) holds each sequence's previous raw ids, oldest first; positions
  // before the history are the sequence start. `fused` adds each table's
  // offset in the layer's fused table. INVALID_ARGUMENT for an unknown
  // layer, a raw id outside the token map, or sizes that do not fit.
  absl::Status Hash(int64_t layer_id, std::span<const int64_t> tokens,
                    int64_t batch, std::span<const int64_t> history, bool fused,
                    std::span<int64_t> out) const;
  // The same over compressed ids: `compressed` [batch, history_length + T]
  // holds each sequence's history then its tokens (no token map, no image
  // rule; any int64, products and modulo as numpy's int64 computes them).
  absl::Status HashCompressed(int64_t layer_id,
                              std::span<const int64_t> compressed,
                              int64_t batch, int64_t history_length, bool fused,
                              std::span<int64_t> out) const;

 private:
  struct Layer {
    int64_t id = 0;
    std::vector<int64_t> multipliers;  // N
    std::vector<int64_t> sizes;        // (N - 1) * H primes
    std::vector<int64_t> offsets;      // fused offset of each table
  };
  EngramHasher() = default;
  const Layer* FindLayer(int64_t layer_id) const;

  EngramHashConfig config_;
  std::vector<int64_t> token_map_;
  int64_t compressed_pad_ = 0;
  uint64_t fingerprint_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace engram

#endif  // ENGRAM_HASH_ENGRAM_HASH_H_
