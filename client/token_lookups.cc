#include "client/token_lookups.h"

#include <cstring>
#include <future>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_context.h"
#include "proto/convert.h"

namespace engram {
namespace {

EngramHashConfig ConfigFromProto(const internal::v1::HashConfig& p) {
  EngramHashConfig c;
  c.layer_ids.assign(p.layer_ids().begin(), p.layer_ids().end());
  c.max_ngram = p.max_ngram();
  c.heads = p.heads();
  c.order_vocab.assign(p.order_vocab().begin(), p.order_vocab().end());
  c.num_embeddings.assign(p.num_embeddings().begin(), p.num_embeddings().end());
  c.pad_token_id = p.pad_token_id();
  c.compressed_vocab = p.compressed_vocab();
  if (p.has_image_token()) c.image_token_id = p.image_token_id();
  return c;
}

// A failure that a fresh copy of the layer's model may cure: the layer was
// populated or loaded again (another version, layout or model).
bool ModelMayHaveChanged(const absl::Status& s) {
  return s.code() == absl::StatusCode::kNotFound ||
         s.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

RoutedTokenLookups::RoutedTokenLookups(ClusterRouter* router,
                                       absl::Duration timeout)
    : router_(router), timeout_(timeout) {}

absl::StatusOr<RoutedTokenLookups::Model> RoutedTokenLookups::Get(
    int64_t layer_id) {
  {
    MutexLock lock(&mu_);
    auto it = by_layer_.find(layer_id);
    if (it != by_layer_.end()) return it->second;
  }
  absl::StatusOr<Model> model = Fetch(layer_id);
  if (!model.ok()) return model.status();
  MutexLock lock(&mu_);
  // Another caller's copy of the same model may be here first: share it.
  std::weak_ptr<const EngramHasher>& shared =
      hashers_[model->hasher->fingerprint()];
  if (auto existing = shared.lock()) {
    model->hasher = std::move(existing);
  } else {
    shared = model->hasher;
  }
  by_layer_[layer_id] = *model;
  return model;
}

absl::StatusOr<RoutedTokenLookups::Model> RoutedTokenLookups::Fetch(
    int64_t layer_id) {
  internal::v1::TokenModelRequest request;
  request.set_layer_id(layer_id);
  internal::v1::TokenModelResponse reply;
  // Shards that hold the layer know its model, but one restarted without
  // --load knows none (an empty answer) while the others do: the first
  // that has it decides; else the most telling refusal.
  absl::Status last = absl::UnavailableError("no shard to ask");
  absl::Status stale;
  bool modelless = false;
  bool answered = false;
  for (int shard = 0; shard < router_->num_shards() && !answered; ++shard) {
    if (!router_->shard_up(shard) && shard + 1 < router_->num_shards()) {
      continue;
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout_));
    reply.Clear();
    last = FromGrpcStatus(
        router_->stub(shard)->TokenModel(&context, request, &reply));
    switch (last.code()) {
      case absl::StatusCode::kOk:
        answered = reply.token_model() != 0;
        modelless = modelless || !answered;
        break;
      case absl::StatusCode::kFailedPrecondition:
        if (stale.ok()) stale = last;
        break;
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kNotFound:
        break;
      default:
        return last;
    }
  }
  if (!answered) {
    if (!stale.ok()) return stale;
    if (modelless) {
      // As the server's LookupTokens says it.
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", layer_id,
          " has no model hash: load it with a manifest whose \"model\" "
          "names config.json and the token map (docs/tokens.md)"));
    }
    return last;
  }
  return ParseTokenModel(layer_id, reply);
}

absl::StatusOr<LayerTokenModel> ParseTokenModel(
    int64_t layer_id, const internal::v1::TokenModelResponse& reply) {
  if (reply.token_map().size() % sizeof(int64_t) != 0) {
    return absl::DataLossError(
        absl::StrCat("the token map of layer ", layer_id, "'s model has ",
                     reply.token_map().size(), " bytes: not whole int64 ids"));
  }
  std::vector<int64_t> token_map(reply.token_map().size() / sizeof(int64_t));
  std::memcpy(token_map.data(), reply.token_map().data(),
              reply.token_map().size());
  absl::StatusOr<EngramHasher> hasher = EngramHasher::Create(
      ConfigFromProto(reply.config()), std::move(token_map));
  if (!hasher.ok()) {
    return WithContext(hasher.status(),
                       absl::StrCat("the model of layer ", layer_id));
  }
  LayerTokenModel model;
  model.engram_layer = reply.engram_layer();
  model.token_model = hasher->TokenModel(model.engram_layer);
  if (model.token_model != reply.token_model()) {
    return absl::DataLossError(absl::StrCat(
        "the model of layer ", layer_id,
        " hashes differently here than on the server (token model ",
        model.token_model, " vs ", reply.token_model(), ")"));
  }
  model.hasher = std::make_shared<const EngramHasher>(*std::move(hasher));
  return model;
}

void RoutedTokenLookups::Forget(int64_t layer_id, uint64_t token_model) {
  MutexLock lock(&mu_);
  auto it = by_layer_.find(layer_id);
  // Only the copy that failed: another caller may have fetched anew.
  if (it != by_layer_.end() && it->second.token_model == token_model) {
    by_layer_.erase(it);
  }
}

std::future<absl::Status> RoutedTokenLookups::Start(
    int64_t layer_id, const Model& model, std::span<const int64_t> tokens,
    int64_t batch, std::span<const int64_t> history, std::span<uint8_t> output,
    std::optional<DType> output_dtype) {
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = done->get_future();
  const int per = model.hasher->ids_per_position();
  const int64_t length = static_cast<int64_t>(tokens.size()) / batch;
  // Per-head ids (column h in table h): what the owners' tables index.
  // Held until the read is done (the router reads them while routing).
  auto ids = std::make_shared<std::vector<int64_t>>(tokens.size() * per);
  if (absl::Status s = model.hasher->Hash(model.engram_layer, tokens, batch,
                                          history, /*fused=*/false, *ids);
      !s.ok()) {
    done->set_value(std::move(s));
    return result;
  }
  const int64_t shape[] = {batch, length, per};
  LookupOptions options;
  options.output_dtype = output_dtype;
  router_->Lookup(
      layer_id, *ids, shape, output, options,
      [done, ids](absl::Status s) { done->set_value(std::move(s)); },
      model.token_model);
  return result;
}

absl::Status RoutedTokenLookups::Lookup(
    std::span<const int64_t> layer_ids, std::span<const int64_t> tokens,
    int64_t batch, std::span<const int64_t> history,
    std::span<const std::span<uint8_t>> outputs,
    std::optional<DType> output_dtype) {
  // Every layer's read runs at once (a step's layers live on any shards).
  std::vector<std::future<absl::Status>> reads;
  std::vector<uint64_t> used(layer_ids.size(), 0);
  std::vector<absl::Status> results(layer_ids.size());
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    absl::StatusOr<Model> model = Get(layer_ids[i]);
    if (!model.ok()) {
      results[i] = model.status();
      reads.emplace_back();
      continue;
    }
    used[i] = model->token_model;
    reads.push_back(Start(layer_ids[i], *model, tokens, batch, history,
                          outputs[i], output_dtype));
  }
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    if (reads[i].valid()) results[i] = reads[i].get();
  }
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    absl::Status& s = results[i];
    if (!s.ok() && used[i] != 0 && ModelMayHaveChanged(s)) {
      // The layer changed under the cached model: learn what it is now
      // (the server says so precisely when it has no model any more) and
      // read once more.
      Forget(layer_ids[i], used[i]);
      absl::StatusOr<Model> model = Get(layer_ids[i]);
      s = model.ok() ? Start(layer_ids[i], *model, tokens, batch, history,
                             outputs[i], output_dtype)
                           .get()
                     : model.status();
    }
    // Named as the server names them.
    if (!s.ok()) return WithContext(s, absl::StrCat("lookups[", i, "]"));
  }
  return absl::OkStatus();
}

}  // namespace engram
