#include "server/token_hashes.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace engram {

absl::StatusOr<std::map<int64_t, TokenHashes::Entry>> TokenHashes::Prepare(
    const checkpoint::LoadManifest& manifest) {
  std::map<int64_t, Entry> entries;
  if (!manifest.model) return entries;
  const checkpoint::ModelSpec& model = *manifest.model;
  absl::StatusOr<EngramHasher> loaded =
      EngramHasher::Load(model.config, model.token_map);
  if (!loaded.ok()) return loaded.status();
  auto hasher = std::make_shared<const EngramHasher>(*std::move(loaded));
  std::map<int64_t, const checkpoint::LayerSpec*> specs;
  for (const checkpoint::LayerSpec& spec : manifest.layers)
    specs[spec.layer_id] = &spec;
  for (int64_t engram : hasher->config().layer_ids) {
    auto mapped = model.engram_layers.find(engram);
    const int64_t served =
        mapped != model.engram_layers.end() ? mapped->second : engram;
    auto spec = specs.find(served);
    if (spec == specs.end()) {
      if (mapped == model.engram_layers.end()) continue;  // not served here
      return absl::InvalidArgumentError(
          absl::StrCat("model: Engram layer ", engram, " maps to layer ",
                       served, ", which the manifest does not list"));
    }
    std::span<const int64_t> primes = hasher->table_sizes(engram);
    const std::vector<int64_t>& sizes = spec->second->layout.table_vocab_sizes;
    if (!std::equal(primes.begin(), primes.end(), sizes.begin(), sizes.end())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model: layer ", served, " (Engram layer ", engram, ") has tables [",
          absl::StrJoin(sizes, ", "), "]; the model's hash addresses [",
          absl::StrJoin(primes, ", "), "]"));
    }
    entries[served] = {hasher, engram};
  }
  for (const auto& [engram, served] : model.engram_layers) {
    if (hasher->table_sizes(engram).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model: engram_layers names Engram layer ", engram,
                       ", which the model's engram_layer_ids do not list"));
    }
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(
        "model: none of the model's engram_layer_ids is a layer of this "
        "manifest (map them with model.engram_layers)");
  }
  return entries;
}

void TokenHashes::Register(
    const std::map<int64_t, Entry>& entries,
    const std::vector<std::shared_ptr<const Layer>>& served) {
  std::function<void(int64_t)> listener;
  {
    MutexLock lock(&mu_);
    for (const auto& [layer, entry] : entries) {
      Entry e = entry;
      for (const auto& l : served) {
        if (l->id() == layer) e.layer_version = l->version();
      }
      by_layer_[layer] = e;
    }
    listener = listener_;
  }
  if (listener) {
    for (const auto& [layer, entry] : entries) listener(layer);
  }
}

void TokenHashes::SetChangeListener(std::function<void(int64_t)> listener) {
  MutexLock lock(&mu_);
  listener_ = std::move(listener);
}

uint64_t TokenHashes::TokenModelOf(const Layer& layer) const {
  std::optional<Entry> model = Find(layer.id());
  if (!model) return 0;
  return CheckCurrent(*model, layer).ok()
             ? model->hasher->TokenModel(model->engram_layer)
             : kStaleTokenModel;
}

absl::Status TokenHashes::CheckCurrent(const Entry& entry, const Layer& layer) {
  const uint64_t loaded = entry.layer_version;
  if (loaded != 0 && layer.version() != loaded) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer.id(), " is version ", layer.version(),
        "; its model hash came with version ", loaded,
        " (populated or replaced since, without a model): load it with a "
        "manifest that names its model"));
  }
  std::span<const int64_t> primes =
      entry.hasher->table_sizes(entry.engram_layer);
  const auto& sizes = layer.layout().table_vocab_sizes;
  if (!std::equal(primes.begin(), primes.end(), sizes.begin(), sizes.end())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer.id(),
        " no longer has the tables its model hash addresses (it was "
        "populated again); load it with its model again"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenHashes::Entry> TokenHashes::FindCurrent(
    const Layer& layer) const {
  std::optional<Entry> entry = Find(layer.id());
  if (!entry) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer.id(),
        " has no model hash: load it with a manifest whose \"model\" names "
        "config.json and the token map (docs/tokens.md)"));
  }
  if (absl::Status s = CheckCurrent(*entry, layer); !s.ok()) return s;
  return *std::move(entry);
}

std::optional<TokenHashes::Entry> TokenHashes::Find(int64_t layer_id) const {
  MutexLock lock(&mu_);
  auto it = by_layer_.find(layer_id);
  if (it == by_layer_.end()) return std::nullopt;
  return it->second;
}

}  // namespace engram
