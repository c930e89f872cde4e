#include "server/populate_reactor.h"

#include <atomic>
#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "server/log.h"
#include "server/read_stream.h"
#include "store/layer_stager.h"

namespace engram {
namespace {

// Lives from the first read until OnDone. gRPC serializes its callbacks
// (one read outstanding at a time); a forced Remove (abort hook) and the
// idle watchdog may end the call from other threads through FinishOnce.
// Everything it holds is released in its own callbacks.
class PopulateReactor : public MessageReadReactor<v1::PopulateRequest> {
 public:
  PopulateReactor(grpc::CallbackServerContext* context,
                  v1::PopulateResponse* response, const PopulateEnv& env)
      : MessageReadReactor(env.watchdog),
        context_(context),
        response_(response),
        env_(env),
        layers_(env.layers),
        budget_(env.budget),
        metrics_(env.metrics),
        pin_(env.pin_memory),
        start_(std::chrono::steady_clock::now()) {
    StartReading();
  }

  void OnDone() override {
    Unwatch();
    stager_.reset();
    delete this;
  }

 private:
  absl::Status OnMessage(const v1::PopulateRequest& request) override {
    return DispatchPopulateRequest(
        request, [this](const auto& h) { return OnHeader(h); },
        [this](const auto& c) { return OnChunk(c); });
  }
  void OnMessageError(const absl::Status& status) override { Fail(status); }
  void OnEndOfStream() override { EndOfStream(); }

  absl::Status OnHeader(const v1::PopulateHeader& header) {
    if (stager_ != nullptr) {
      return absl::InvalidArgumentError(
          "a second PopulateHeader arrived; send one header, then chunks");
    }
    layer_id_ = header.layer_id();
    absl::StatusOr<LayerLayout> layout = LayoutFromConfig(header.config());
    if (!layout.ok()) return layout.status();
    LayerStager::Options options;
    options.pin_memory = pin_;
    options.exporter = env_.exporter;
    options.on_abort = [this] { FinishOnce(ToGrpcStatus(AbortedByRemove())); };
    options.replace = header.replace();
    options.files.dir = env_.data_dir;
    absl::StatusOr<std::unique_ptr<LayerStager>> stager = LayerStager::Begin(
        layers_, budget_, layer_id_, *std::move(layout), std::move(options));
    if (!stager.ok()) return stager.status();
    stager_ = *std::move(stager);
    return absl::OkStatus();
  }

  absl::Status OnChunk(const v1::TableChunk& chunk) {
    if (stager_ == nullptr) {
      return absl::InvalidArgumentError(
          "the first Populate message must be a PopulateHeader");
    }
    metrics_->RecordPopulateBytes(static_cast<int64_t>(chunk.data().size()));
    return stager_->AddChunk(chunk.head(), chunk.row_offset(), chunk.data());
  }

  void EndOfStream() {
    if (finished()) {  // a forced Remove or the idle watchdog ended it
      LogWarning(absl::StrCat("populate of layer ", layer_id_,
                              " ended early, nothing kept"));
      stager_.reset();
      return;
    }
    if (context_->IsCancelled()) {
      Fail(absl::CancelledError("the client cancelled the populate stream"));
      return;
    }
    if (stager_ == nullptr) {
      Fail(absl::InvalidArgumentError(
          "the populate stream ended without a PopulateHeader"));
      return;
    }
    absl::StatusOr<std::shared_ptr<Layer>> layer = stager_->Finish();
    if (!layer.ok()) {
      Fail(layer.status());
      return;
    }
    if (env_.gpu == nullptr) {
      Commit(*std::move(layer));
      return;
    }
    // Copying a layer to the GPU can take a while: do it on a worker, not
    // on this reactor thread. Finish is thread-safe.
    env_.pool->Submit(
        [this, l = *std::move(layer)]() mutable { Commit(std::move(l)); });
  }

  void Commit(std::shared_ptr<Layer> layer) {
    std::shared_ptr<const Layer> committed = layer;
    if (absl::Status s = MirrorAndCommit(env_.gpu, layers_, stager_->ticket(),
                                         std::move(layer));
        !s.ok()) {
      Fail(s);
      return;
    }
    stager_.reset();  // committed: nothing left to give back
    FillLayerInfo(committed->id(), committed->layout(),
                  response_->mutable_layer(), committed->version());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    const LayerLayout& l = committed->layout();
    LogInfo(absl::StrCat(
        "layer ", layer_id_, " committed: ", l.num_heads(), " heads, D = ",
        l.embedding_dim, " ", DTypeName(l.dtype), ", ", committed->bytes(),
        " bytes, pinned: ", PinModeName(committed->pin_mode()),
        committed->gpu_mirror() != nullptr ? ", on the GPU" : "", ", in ",
        seconds, " s"));
    metrics_->RecordCall(Method::kPopulate, grpc::OK);
    FinishOnce(grpc::Status::OK);
  }

  absl::Status AbortedByRemove() const {
    return absl::AbortedError(
        absl::StrCat("populate of layer ", layer_id_,
                     " was aborted by a forced Remove; nothing was committed"));
  }

  // Drops everything staged and ends the call with `status`.
  void Fail(const absl::Status& status) {
    LogWarning(absl::StrCat("populate of layer ", layer_id_,
                            " failed, nothing kept: ", status.ToString()));
    stager_.reset();  // frees staged tables, budget charge and the claim
    metrics_->RecordCall(Method::kPopulate,
                         static_cast<grpc::StatusCode>(status.code()));
    FinishOnce(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  v1::PopulateResponse* const response_;
  const PopulateEnv env_;
  LayerRegistry* const layers_;
  MemoryBudget* const budget_;
  ServerMetrics* const metrics_;
  const bool pin_;
  const std::chrono::steady_clock::time_point start_;
  int64_t layer_id_ = 0;
  // Detaches the abort hook when dropped (OnDone at the latest), so the
  // hook never reaches a deleted reactor.
  std::unique_ptr<LayerStager> stager_;
};

}  // namespace

grpc::ServerReadReactor<v1::PopulateRequest>* NewPopulateReactor(
    grpc::CallbackServerContext* context, v1::PopulateResponse* response,
    const PopulateEnv& env) {
  return new PopulateReactor(context, response, env);
}

absl::Status MirrorAndCommit(GpuTier* gpu, LayerRegistry* layers,
                             const std::shared_ptr<PopulateTicket>& ticket,
                             std::shared_ptr<Layer> layer) {
  if (gpu != nullptr && !layer->complete()) {
    LogInfo(absl::StrCat(
        "layer ", layer->id(), " is a shard's partial copy; ",
        "it stays in host memory (GPU mirrors hold whole layers)"));
  } else if (gpu != nullptr) {
    absl::StatusOr<std::shared_ptr<const GpuLayerMirror>> mirror =
        gpu->Mirror(*layer);
    if (mirror.ok()) {
      layer->AttachGpuMirror(*std::move(mirror));
    } else {
      LogWarning(absl::StrCat("layer ", layer->id(),
                              " stays host-only (not mirrored to the GPU): ",
                              mirror.status().ToString()));
    }
  }
  return layers->Commit(ticket, std::move(layer));
}

}  // namespace engram
