#include "hash/engram_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/json.h"
#include "checkpoint/npy.h"
#include "hash/numpy_random.h"

namespace engram {
namespace {

using checkpoint::Json;

absl::string_view View(std::string_view s) { return {s.data(), s.size()}; }

absl::Status Invalid(std::string_view what, std::string message) {
  return absl::InvalidArgumentError(absl::StrCat(View(what), ": ", message));
}

absl::StatusOr<int64_t> IntKey(const Json& config, const char* key,
                               std::string_view what) {
  const Json* v = checkpoint::JsonMember(config, key);
  if (v == nullptr) return Invalid(what, absl::StrCat("no ", key));
  absl::StatusOr<int64_t> n = checkpoint::JsonInt64(*v);
  if (!n.ok())
    return Invalid(what, absl::StrCat(key, ": ", n.status().message()));
  return *n;
}

// An integer or a list of integers.
absl::StatusOr<std::vector<int64_t>> IntList(const Json& config,
                                             const char* key,
                                             std::string_view what) {
  const Json* v = checkpoint::JsonMember(config, key);
  if (v == nullptr) return Invalid(what, absl::StrCat("no ", key));
  std::vector<int64_t> out;
  if (!v->is_array()) {
    absl::StatusOr<int64_t> n = checkpoint::JsonInt64(*v);
    if (!n.ok())
      return Invalid(what, absl::StrCat(key, ": ", n.status().message()));
    out.push_back(*n);
    return out;
  }
  for (const Json& e : *v) {
    absl::StatusOr<int64_t> n = checkpoint::JsonInt64(e);
    if (!n.ok())
      return Invalid(what, absl::StrCat(key, ": ", n.status().message()));
    out.push_back(*n);
  }
  return out;
}

bool IsPrime(int64_t n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  if (n % 3 == 0) return n == 3;
  for (int64_t f = 5; f * f <= n; f += 6) {
    if (n % f == 0 || n % (f + 2) == 0) return false;
  }
  return true;
}

// numpy int64 floor modulo of a wrapped product-xor by a positive prime.
inline int64_t FloorMod(int64_t x, int64_t p) {
  int64_t r = x % p;
  return r < 0 ? r + p : r;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<std::vector<int64_t>> ReadTokenMap(const std::string& path) {
  std::vector<int64_t> map;
  if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".i32") == 0) {
    absl::StatusOr<std::string> bytes = ReadText(path);
    if (!bytes.ok()) return bytes.status();
    if (bytes->size() % 4 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", bytes->size(), " bytes are not whole int32 values"));
    }
    map.resize(bytes->size() / 4);
    for (size_t i = 0; i < map.size(); ++i) {
      int32_t v;
      std::memcpy(&v, bytes->data() + 4 * i, 4);
      map[i] = v;
    }
    return map;
  }
  absl::StatusOr<checkpoint::NpyArray> a = checkpoint::ReadNpy(path);
  if (!a.ok()) return a.status();
  if (a->shape.size() != 1 || (a->descr != "<i4" && a->descr != "<i8")) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": the token map must be a 1-D int32 or int64 .npy; got ",
        a->descr, " of rank ", a->shape.size()));
  }
  map.resize(a->num_elements());
  for (size_t i = 0; i < map.size(); ++i) {
    if (a->descr == "<i4") {
      int32_t v;
      std::memcpy(&v, a->data.data() + 4 * i, 4);
      map[i] = v;
    } else {
      std::memcpy(&map[i], a->data.data() + 8 * i, 8);
    }
  }
  return map;
}

}  // namespace

absl::StatusOr<EngramHashConfig> EngramHashConfig::FromJson(
    std::string_view text, std::string_view what) {
  absl::StatusOr<Json> doc = checkpoint::ParseJson(View(text), View(what));
  if (!doc.ok()) return doc.status();
  const Json* nested = checkpoint::JsonMember(*doc, "text_config");
  const Json& c = nested != nullptr && nested->is_object() ? *nested : *doc;
  EngramHashConfig config;
  absl::StatusOr<std::vector<int64_t>> layers =
      IntList(c, "engram_layer_ids", what);
  if (!layers.ok()) return layers.status();
  config.layer_ids = *layers;
  absl::StatusOr<int64_t> n = IntKey(c, "engram_max_ngram_size", what);
  if (!n.ok()) return n.status();
  absl::StatusOr<int64_t> h = IntKey(c, "engram_n_heads", what);
  if (!h.ok()) return h.status();
  if (*n < 2 || *n > 16 || *h < 1 || *h > 1024) {
    return Invalid(what, absl::StrCat("engram_max_ngram_size ", *n,
                                      " (2 to 16) or engram_n_heads ", *h,
                                      " (1 to 1024) out of range"));
  }
  config.max_ngram = static_cast<int>(*n);
  config.heads = static_cast<int>(*h);
  absl::StatusOr<std::vector<int64_t>> vocab =
      IntList(c, "engram_vocab_size", what);
  if (!vocab.ok()) return vocab.status();
  if (vocab->size() == 1) vocab->assign(config.max_ngram - 1, vocab->front());
  if (vocab->size() != static_cast<size_t>(config.max_ngram - 1)) {
    return Invalid(what, absl::StrCat("engram_vocab_size has ", vocab->size(),
                                      " entries; orders 2..", config.max_ngram,
                                      " need ", config.max_ngram - 1));
  }
  for (int64_t v : *vocab) {
    if (v < 2 || v > (int64_t{1} << 40)) {
      return Invalid(what,
                     absl::StrCat("engram_vocab_size ", v, " is out of range"));
    }
  }
  config.order_vocab = *vocab;
  if (checkpoint::JsonMember(c, "engram_num_embeddings") != nullptr) {
    absl::StatusOr<std::vector<int64_t>> e =
        IntList(c, "engram_num_embeddings", what);
    if (!e.ok()) return e.status();
    config.num_embeddings = *e;
  }
  absl::StatusOr<int64_t> pad = IntKey(c, "engram_pad_token_id", what);
  if (!pad.ok()) return pad.status();
  config.pad_token_id = *pad;
  absl::StatusOr<int64_t> v = IntKey(c, "engram_compressed_vocab_size", what);
  if (!v.ok()) return v.status();
  if (*v < 1) return Invalid(what, "engram_compressed_vocab_size must be >= 1");
  config.compressed_vocab = *v;
  if (checkpoint::JsonMember(c, "image_token_id") != nullptr) {
    absl::StatusOr<int64_t> image = IntKey(c, "image_token_id", what);
    if (!image.ok()) return image.status();
    config.image_token_id = *image;
  }
  return config;
}

absl::StatusOr<EngramHasher> EngramHasher::Create(
    EngramHashConfig config, std::vector<int64_t> token_map) {
  if (config.layer_ids.empty()) {
    return absl::InvalidArgumentError("engram_layer_ids is empty");
  }
  if (!config.num_embeddings.empty() &&
      config.num_embeddings.size() != config.layer_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engram_num_embeddings has ", config.num_embeddings.size(),
        " entries for ", config.layer_ids.size(), " engram_layer_ids"));
  }
  std::set<int64_t> distinct(token_map.begin(), token_map.end());
  if (static_cast<int64_t>(distinct.size()) != config.compressed_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the token map has ", distinct.size(),
        " distinct compressed ids; engram_compressed_vocab_size is ",
        config.compressed_vocab));
  }
  if (config.pad_token_id < 0 ||
      config.pad_token_id >= static_cast<int64_t>(token_map.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engram_pad_token_id ", config.pad_token_id,
        " is outside the token map's ", token_map.size(), " raw ids"));
  }
  EngramHasher hasher;
  hasher.compressed_pad_ = token_map[config.pad_token_id];
  const int n = config.max_ngram;
  const int64_t half = std::max<int64_t>(
      1, (std::numeric_limits<int64_t>::max() / config.compressed_vocab) / 2);
  std::set<int64_t> used;
  for (size_t li = 0; li < config.layer_ids.size(); ++li) {
    Layer layer;
    layer.id = config.layer_ids[li];
    if (layer.id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("engram_layer_ids holds ", layer.id));
    }
    const std::vector<int64_t> r = numpy_random::Integers(
        static_cast<uint64_t>(10007) * static_cast<uint64_t>(layer.id), half,
        n);
    for (int64_t x : r) layer.multipliers.push_back(2 * x + 1);
    for (int order = 2; order <= n; ++order) {
      int64_t start = config.order_vocab[order - 2] - 1;
      for (int j = 0; j < config.heads; ++j) {
        int64_t p = start + 1;
        while (!IsPrime(p) || used.count(p) != 0) ++p;
        used.insert(p);
        layer.sizes.push_back(p);
        start = p;
      }
    }
    int64_t total = 0;
    for (int64_t s : layer.sizes) {
      layer.offsets.push_back(total);
      total += s;
    }
    if (!config.num_embeddings.empty() && total != config.num_embeddings[li]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer.id, "'s tables sum to ", total,
          " rows; engram_num_embeddings says ", config.num_embeddings[li]));
    }
    hasher.layers_.push_back(std::move(layer));
  }
  hasher.config_ = std::move(config);
  hasher.token_map_ = std::move(token_map);
  hasher.fingerprint_ = Fingerprint(hasher.config_, hasher.token_map_);
  return hasher;
}

uint64_t EngramHasher::Fingerprint(const EngramHashConfig& config,
                                   std::span<const int64_t> token_map) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  auto add = [state](std::span<const int64_t> values) {
    const int64_t n = static_cast<int64_t>(values.size());
    XXH3_64bits_update(state, &n, sizeof n);  // lists cannot run together
    XXH3_64bits_update(state, values.data(), values.size_bytes());
  };
  add(config.layer_ids);
  add(config.order_vocab);
  add(config.num_embeddings);
  const int64_t image = config.image_token_id.value_or(-1);
  const int64_t scalars[] = {config.max_ngram,
                             config.heads,
                             config.pad_token_id,
                             config.compressed_vocab,
                             config.image_token_id.has_value() ? 1 : 0,
                             image};
  add(scalars);
  add(token_map);
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest == 0 ? 1 : digest;  // 0 means "no model" on the wire
}

uint64_t EngramHasher::TokenModel(int64_t layer_id) const {
  const int64_t words[] = {static_cast<int64_t>(fingerprint_), layer_id};
  const uint64_t id = XXH3_64bits(words, sizeof words);
  return id == 0 || id == kStaleTokenModel ? 1 : id;
}

absl::StatusOr<EngramHasher> EngramHasher::Load(
    const std::string& config_path, const std::string& token_map_path) {
  absl::StatusOr<std::string> text = ReadText(config_path);
  if (!text.ok()) return text.status();
  absl::StatusOr<EngramHashConfig> config =
      EngramHashConfig::FromJson(*text, config_path);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::vector<int64_t>> map = ReadTokenMap(token_map_path);
  if (!map.ok()) return map.status();
  absl::StatusOr<EngramHasher> hasher =
      Create(*std::move(config), *std::move(map));
  if (!hasher.ok()) {
    return absl::Status(hasher.status().code(),
                        absl::StrCat(config_path, " with ", token_map_path,
                                     ": ", hasher.status().message()));
  }
  return hasher;
}

const EngramHasher::Layer* EngramHasher::FindLayer(int64_t layer_id) const {
  for (const Layer& l : layers_) {
    if (l.id == layer_id) return &l;
  }
  return nullptr;
}

std::span<const int64_t> EngramHasher::table_sizes(int64_t layer_id) const {
  const Layer* l = FindLayer(layer_id);
  return l == nullptr ? std::span<const int64_t>() : l->sizes;
}

std::span<const int64_t> EngramHasher::multipliers(int64_t layer_id) const {
  const Layer* l = FindLayer(layer_id);
  return l == nullptr ? std::span<const int64_t>() : l->multipliers;
}

namespace {

// One sequence: values [h + T] (history then tokens, compressed; `dead`
// marks the image tokens, may be null) -> out [T, (N-1) * H].
void HashSequence(const int64_t* mult, const int64_t* sizes,
                  const int64_t* offsets, int n, int heads, int64_t pad,
                  const int64_t* values, const uint8_t* dead, int64_t h,
                  int64_t tokens, bool fused, int64_t* out) {
  const int per_position = (n - 1) * heads;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t p = h + t;
    uint64_t mix = 0;
    int64_t* row = out + t * per_position;
    for (int k = 0; k < n; ++k) {
      const int64_t src = p - k;
      const bool blocked = src < 0 || (dead != nullptr && dead[src]);
      const uint64_t v = static_cast<uint64_t>(blocked ? pad : values[src]);
      const uint64_t product = v * static_cast<uint64_t>(mult[k]);
      mix = k == 0 ? product : mix ^ product;
      if (k == 0) continue;
      const int base = (k - 1) * heads;
      for (int j = 0; j < heads; ++j) {
        const int64_t id = FloorMod(static_cast<int64_t>(mix), sizes[base + j]);
        row[base + j] = fused ? id + offsets[base + j] : id;
      }
    }
  }
}

}  // namespace

absl::Status EngramHasher::HashCompressed(int64_t layer_id,
                                          std::span<const int64_t> compressed,
                                          int64_t batch, int64_t history_length,
                                          bool fused,
                                          std::span<int64_t> out) const {
  const Layer* layer = FindLayer(layer_id);
  if (layer == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_id,
                     " is not an Engram layer of this "
                     "model (engram_layer_ids [",
                     absl::StrJoin(config_.layer_ids, ", "), "])"));
  }
  if (batch < 1 || history_length < 0 ||
      history_length > config_.max_ngram - 1 ||
      compressed.size() % batch != 0 ||
      static_cast<int64_t>(compressed.size() / batch) <= history_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressed ids (", compressed.size(),
                     ") must be [batch = ", batch, ", history ", history_length,
                     " + T >= 1] with history <= ", config_.max_ngram - 1));
  }
  const int64_t per_seq = static_cast<int64_t>(compressed.size()) / batch;
  const int64_t tokens = per_seq - history_length;
  if (out.size() != static_cast<size_t>(batch * tokens * ids_per_position())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out holds ", out.size(), " ids; [", batch, ", ", tokens, ", ",
        ids_per_position(), "] need ", batch * tokens * ids_per_position()));
  }
  for (int64_t b = 0; b < batch; ++b) {
    HashSequence(layer->multipliers.data(), layer->sizes.data(),
                 layer->offsets.data(), config_.max_ngram, config_.heads,
                 compressed_pad_, compressed.data() + b * per_seq, nullptr,
                 history_length, tokens, fused,
                 out.data() + b * tokens * ids_per_position());
  }
  return absl::OkStatus();
}

absl::Status EngramHasher::Hash(int64_t layer_id,
                                std::span<const int64_t> tokens, int64_t batch,
                                std::span<const int64_t> history, bool fused,
                                std::span<int64_t> out) const {
  const Layer* layer = FindLayer(layer_id);
  if (layer == nullptr) {
    return HashCompressed(layer_id, {}, 1, 0, fused, out);  // names it
  }
  if (batch < 1 || tokens.empty() || tokens.size() % batch != 0 ||
      history.size() % batch != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokens (", tokens.size(), ") and history (", history.size(),
        ") must be [batch = ", batch, ", T >= 1] and [batch, h]"));
  }
  const int64_t t_len = static_cast<int64_t>(tokens.size()) / batch;
  const int64_t h = static_cast<int64_t>(history.size()) / batch;
  if (h > config_.max_ngram - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("history holds ", h, " tokens per sequence; at most ",
                     config_.max_ngram - 1, " (N - 1) are used"));
  }
  if (out.size() != static_cast<size_t>(batch * t_len * ids_per_position())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out holds ", out.size(), " ids; [", batch, ", ", t_len, ", ",
        ids_per_position(), "] need ", batch * t_len * ids_per_position()));
  }
  const int64_t map_size = static_cast<int64_t>(token_map_.size());
  std::vector<int64_t> values(h + t_len);
  std::vector<uint8_t> dead(h + t_len);
  const bool has_image = config_.image_token_id.has_value();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < h + t_len; ++i) {
      const int64_t raw =
          i < h ? history[b * h + i] : tokens[b * t_len + i - h];
      if (raw < 0 || raw >= map_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            i < h ? "history[" : "tokens[", b, ", ", i < h ? i : i - h, "] = ",
            raw, " is not a raw token id (the token map has ", map_size, ")"));
      }
      values[i] = token_map_[raw];
      dead[i] = has_image && raw == *config_.image_token_id;
    }
    HashSequence(layer->multipliers.data(), layer->sizes.data(),
                 layer->offsets.data(), config_.max_ngram, config_.heads,
                 compressed_pad_, values.data(),
                 has_image ? dead.data() : nullptr, h, t_len, fused,
                 out.data() + b * t_len * ids_per_position());
  }
  return absl::OkStatus();
}

}  // namespace engram
