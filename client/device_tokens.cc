#include "client/device_tokens.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace engram {

absl::StatusOr<std::unique_ptr<DeviceTokenModel>> DeviceTokenModel::Fetch(
    const std::shared_ptr<grpc::Channel>& channel, int64_t layer_id,
    absl::Duration timeout) {
  auto stub = internal::v1::EngramPeer::NewStub(channel);
  internal::v1::TokenModelRequest request;
  request.set_layer_id(layer_id);
  internal::v1::TokenModelResponse reply;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (absl::Status s =
          FromGrpcStatus(stub->TokenModel(&context, request, &reply));
      !s.ok()) {
    return s;
  }
  if (reply.token_model() == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer_id,
        " has no model hash: load it with a manifest whose \"model\" names "
        "config.json and the token map (docs/tokens.md)"));
  }
  absl::StatusOr<LayerTokenModel> model = ParseTokenModel(layer_id, reply);
  if (!model.ok()) return model.status();
  const EngramHasher& h = *model->hasher;
  if (h.config().max_ngram > gpu::kMaxTokenNgram) {
    return absl::UnimplementedError(absl::StrCat(
        "layer ", layer_id, "'s model hashes ", h.config().max_ngram,
        "-grams; token lookups on the GPU hash up to ", gpu::kMaxTokenNgram));
  }
  std::unique_ptr<DeviceTokenModel> out(new DeviceTokenModel);
  std::span<const int64_t> map = h.token_map();
  absl::StatusOr<gpu::DeviceMemory<int64_t>> device_map =
      gpu::NewDeviceMemory<int64_t>(std::max<size_t>(map.size_bytes(), 8));
  if (!device_map.ok()) return device_map.status();
  out->token_map_ = std::move(*device_map);
  if (absl::Status s = gpu::CopyToDevice(out->token_map_.get(), map.data(),
                                         map.size_bytes());
      !s.ok()) {
    return s;
  }
  gpu::TokenHashArgs& a = out->base_;
  a.token_map = out->token_map_.get();
  a.map_size = static_cast<int64_t>(map.size());
  a.pad = h.compressed_pad();
  a.image_token = h.config().image_token_id.value_or(-1);
  a.ngram = h.config().max_ngram;
  a.heads = h.config().heads;
  std::span<const int64_t> mult = h.multipliers(model->engram_layer);
  std::copy(mult.begin(), mult.end(), a.multipliers);
  out->model_ = *std::move(model);
  return out;
}

absl::Status DeviceTokenModel::CheckLayout(int64_t layer_id,
                                           const LayerLayout& layout) const {
  std::span<const int64_t> primes =
      model_.hasher->table_sizes(model_.engram_layer);
  const auto& sizes = layout.table_vocab_sizes;
  if (!std::equal(primes.begin(), primes.end(), sizes.begin(), sizes.end())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer_id, " has ", sizes.size(), " tables, not the ",
        primes.size(), " of its model's hash (Engram layer ",
        model_.engram_layer, "): it was populated again since"));
  }
  return absl::OkStatus();
}

gpu::TokenHashArgs DeviceTokenModel::Args(const DeviceTokens& t,
                                          const int64_t* tokens,
                                          const int64_t* history) const {
  gpu::TokenHashArgs a = base_;
  a.tokens = tokens;
  a.history = history;
  a.batch = t.batch;
  a.length = t.length;
  a.history_length = t.history_length;
  return a;
}

absl::Status DeviceTokenModel::ExplainBadToken(
    int64_t layer_id, const DeviceTokens& t, std::span<const int64_t> tokens,
    std::span<const int64_t> history) const {
  std::vector<int64_t> ids(tokens.size() * ids_per_position());
  absl::Status s = model_.hasher->Hash(model_.engram_layer, tokens, t.batch,
                                       history, /*fused=*/false, ids);
  if (!s.ok()) return absl::InvalidArgumentError(s.message());
  return absl::InvalidArgumentError(absl::StrCat(
      "a token of layer ", layer_id,
      "'s lookup was not a raw id of its model's token map when the GPU "
      "read it (the tokens have changed since)"));
}

}  // namespace engram
