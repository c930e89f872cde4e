#include "server/peer_service.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_context.h"
#include "proto/convert.h"
#include "proto/wire_format.h"
#include "server/log.h"
#include "server/lookup_request.h"
#include "server/read_stream.h"
#include "server/table_loader.h"
#include "store/gather.h"
#include "store/layer_stager.h"

namespace engram {
namespace {

using internal::v1::StageRequest;

constexpr size_t kMaxTxnIdBytes = 128;
// How many aborted transaction ids a shard remembers. A coordinator's late
// Stage header arrives within moments of its Abort; ids are unique per
// populate, so a bounded memory of recent ones is enough.
constexpr size_t kRememberedAborts = 4096;

// A raw TxnRequest → TxnResponse call: `handler(txn_id, done)`.
template <typename Handler>
grpc::ServerUnaryReactor* ServeTxn(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response,
                                   Handler&& handler) {
  return ServeRaw<internal::v1::TxnRequest, internal::v1::TxnResponse>(
      context, request, response,
      [handler = std::forward<Handler>(handler)](
          const internal::v1::TxnRequest& txn, internal::v1::TxnResponse*,
          RawDone done) { handler(txn.txn_id(), std::move(done)); });
}

// One Stage stream: this shard's rows of one cluster populate. gRPC
// serializes its callbacks; a forced Remove (abort hook) and the idle
// watchdog may end the call from other threads through FinishOnce.
class StageReactor : public MessageReadReactor<StageRequest> {
 public:
  StageReactor(grpc::CallbackServerContext* context,
               internal::v1::StageResponse* response, PeerService* service)
      : MessageReadReactor(service->watchdog()),
        context_(context),
        response_(response),
        service_(service) {
    StartReading();
  }

  void OnDone() override {
    Unwatch();
    Release();
    delete this;
  }

 private:
  absl::Status OnMessage(const StageRequest& request) override {
    absl::Status s;
    if (request.has_header()) {
      s = OnHeader(request.header());
    } else if (request.has_chunk()) {
      s = stager_ == nullptr
              ? absl::InvalidArgumentError("Stage needs a header first")
              : stager_->AddChunk(request.chunk().head(),
                                  request.chunk().row_offset(),
                                  request.chunk().data());
    } else {
      s = absl::InvalidArgumentError("empty StageRequest");
    }
    if (s.ok() && stager_ != nullptr && stager_->aborted()) {
      s = AbortedByRemove();
    }
    return s;
  }
  void OnMessageError(const absl::Status& status) override { Done(status); }
  void OnEndOfStream() override { EndOfStream(); }

  absl::Status AbortedByRemove() const {
    return absl::AbortedError(absl::StrCat(
        "stage of layer ", layer_id_,
        " was aborted (a forced Remove, or its coordinator's Abort); nothing "
        "was kept"));
  }

  absl::Status OnHeader(const internal::v1::StageHeader& header) {
    if (stager_ != nullptr)
      return absl::InvalidArgumentError("second Stage header");
    if (header.txn_id().empty() || header.txn_id().size() > kMaxTxnIdBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("txn_id must be 1 to ", kMaxTxnIdBytes, " bytes; got ",
                       header.txn_id().size()));
    }
    if (absl::Status s = service_->ClaimTxn(header.txn_id(), /*stream=*/true);
        !s.ok()) {
      return s;
    }
    txn_id_ = header.txn_id();
    layer_id_ = header.layer_id();
    absl::StatusOr<LayerLayout> layout = LayoutFromConfig(header.config());
    if (!layout.ok()) return layout.status();
    const ClusterContext& cluster = *service_->cluster();
    LayerStager::Options options;
    options.pin_memory = service_->pin_memory();
    options.exporter = service_->exporter();
    options.owned = cluster.OwnedRanges(layer_id_, *layout);
    options.files = {service_->data_dir(), cluster.shape()};
    options.on_abort = [this] { FinishOnce(ToGrpcStatus(AbortedByRemove())); };
    options.replace = header.replace();
    auto stager =
        LayerStager::Begin(service_->layers(), service_->budget(), layer_id_,
                           *std::move(layout), std::move(options));
    if (!stager.ok()) return stager.status();
    stager_ = *std::move(stager);
    return service_->SetStagingTicket(txn_id_, stager_->ticket());
  }

  void EndOfStream() {
    if (finished()) {  // a forced Remove or the idle watchdog ended it
      Release();
      return;
    }
    if (context_->IsCancelled()) {
      Done(absl::CancelledError("the coordinator cancelled the stage stream"));
      return;
    }
    if (stager_ == nullptr) {
      Done(absl::InvalidArgumentError("Stage stream without a header"));
      return;
    }
    // Finish detaches the abort hook: the claim outlives this call (it
    // waits for Commit) and must not reach this reactor any more.
    auto layer = stager_->Finish();
    if (!layer.ok()) {
      Done(layer.status());
      return;
    }
    response_->set_rows_staged(stager_->rows_received());
    if (stager_->aborted()) {
      Done(AbortedByRemove());
      return;
    }
    absl::Status prepared = service_->AddPrepared(
        txn_id_, stager_->TakeTicket(), *std::move(layer));
    stager_.reset();
    txn_id_.clear();  // the prepared entry holds the claim now, or nobody
    FinishOnce(ToGrpcStatus(prepared));
  }

  void Done(const absl::Status& status) {
    Release();
    FinishOnce(ToGrpcStatus(status));
  }

  // Drops the staged rows, the layer claim and the txn claim (if still
  // ours); idempotent.
  void Release() {
    stager_.reset();  // staged rows, budget charge and claim, if still ours
    if (!txn_id_.empty()) {
      service_->ReleaseTxn(txn_id_);
      txn_id_.clear();
    }
  }

  grpc::CallbackServerContext* const context_;
  internal::v1::StageResponse* const response_;
  PeerService* const service_;
  std::string txn_id_;  // non-empty while this stream holds the claim
  int64_t layer_id_ = 0;
  std::unique_ptr<LayerStager> stager_;
};

}  // namespace

PeerService::PeerService(Parts parts)
    : layers_(parts.layers),
      budget_(parts.budget),
      cluster_(parts.cluster),
      pin_memory_(parts.pin_memory),
      transport_(parts.transport),
      watchdog_(parts.watchdog),
      loader_(parts.loader),
      hashes_(parts.hashes),
      auth_(parts.auth),
      data_dir_(std::move(parts.data_dir)),
      limits_(parts.limits) {
  if (transport_ != nullptr) exporter_ = transport_->Mapper();
  watch_hub_ = LayerWatchHub::Create(layers_, transport_, hashes_, parts.watch);
  janitor_.Start(std::chrono::seconds(1),
                 PeriodicThread::First::kAfterOnePeriod,
                 [this](const std::stop_token&) {
                   DropExpired();
                   return true;
                 });
}

PeerService::~PeerService() {
  watch_hub_->Close();
  janitor_.Stop();
  watch_hub_->ExpireHeld(/*all=*/true);
  MutexLock lock(&mu_);
  // Never committed: sealed --data_dir folders must not come back.
  for (auto& [txn, p] : prepared_) {
    p.layer->ReleaseStorage();
    layers_->Abandon(p.ticket);
  }
}

absl::Status PeerService::AddPrepared(
    const std::string& txn_id, std::shared_ptr<PopulateTicket> ticket,
    std::shared_ptr<Layer> layer,
    std::function<void(const std::shared_ptr<const Layer>&)> on_commit) {
  const auto timeout =
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(cluster_->staged_timeout_seconds()));
  MutexLock lock(&mu_);
  staging_txns_.erase(txn_id);  // named its ticket: no Abort waits
  if (aborted_txns_.contains(txn_id)) {
    layer->ReleaseStorage();
    layers_->Abandon(ticket);
    return absl::AbortedError(
        absl::StrCat("transaction ", txn_id.substr(0, kMaxTxnIdBytes),
                     " was aborted by its coordinator; nothing was kept"));
  }
  prepared_[txn_id] = {std::move(ticket), std::move(layer),
                       std::chrono::steady_clock::now() + timeout,
                       std::move(on_commit)};
  return absl::OkStatus();
}

absl::Status PeerService::ClaimTxn(const std::string& txn_id, bool stream) {
  MutexLock lock(&mu_);
  if (aborted_txns_.contains(txn_id)) {
    return absl::AbortedError(
        absl::StrCat("transaction ", txn_id.substr(0, kMaxTxnIdBytes),
                     " was already aborted on shard ", cluster_->self()));
  }
  if (staging_txns_.contains(txn_id) || prepared_.contains(txn_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("transaction ", txn_id.substr(0, kMaxTxnIdBytes),
                     " is already in use on shard ", cluster_->self()));
  }
  staging_txns_[txn_id].setting_up = stream;
  return absl::OkStatus();
}

absl::Status PeerService::SetStagingTicket(
    const std::string& txn_id, std::shared_ptr<PopulateTicket> ticket) {
  MutexLock lock(&mu_);
  auto it = staging_txns_.find(txn_id);
  if (it == staging_txns_.end() || aborted_txns_.contains(txn_id)) {
    return absl::AbortedError(
        absl::StrCat("transaction ", txn_id.substr(0, kMaxTxnIdBytes),
                     " was aborted by its coordinator; nothing was kept"));
  }
  it->second.ticket = std::move(ticket);
  it->second.setting_up = false;
  return absl::OkStatus();
}

void PeerService::RememberAborted(const std::string& txn_id) {
  if (!aborted_txns_.insert(txn_id).second) return;
  aborted_order_.push_back(txn_id);
  if (aborted_order_.size() > kRememberedAborts) {
    aborted_txns_.erase(aborted_order_.front());
    aborted_order_.pop_front();
  }
}

void PeerService::ReleaseTxn(const std::string& txn_id) {
  std::vector<RawDone> waiting;
  {
    MutexLock lock(&mu_);
    auto it = staging_txns_.find(txn_id);
    if (it == staging_txns_.end()) return;
    waiting = std::move(it->second.waiting_aborts);
    staging_txns_.erase(it);
  }
  for (RawDone& done : waiting) done(absl::OkStatus());
}

void PeerService::DropExpired() {
  {
    MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto it = prepared_.begin(); it != prepared_.end();) {
      const bool aborted = it->second.ticket->aborted();
      if (aborted || it->second.expires <= now) {
        LogWarning(absl::StrCat("staged rows of layer ", it->second.layer->id(),
                                " (txn ", it->first, ") dropped: ",
                                aborted ? "a forced Remove aborted them"
                                        : "no commit from the coordinator"));
        it->second.layer->ReleaseStorage();
        layers_->Abandon(it->second.ticket);
        it = prepared_.erase(it);
      } else {
        ++it;
      }
    }
  }
  watch_hub_->ExpireHeld();
}

grpc::ServerReadReactor<StageRequest>* PeerService::Stage(
    grpc::CallbackServerContext* context,
    internal::v1::StageResponse* response) {
  if (absl::StatusOr<Caller> caller =
          Authorize(auth_, *context, Method::kStage);
      !caller.ok()) {
    return new RefusedStream<StageRequest>(ToGrpcStatus(caller.status()));
  }
  return new StageReactor(context, response, this);
}

grpc::ServerUnaryReactor* PeerService::Commit(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kCommit)) {
    return refused;
  }
  return ServeTxn(context, request, response,
                  [this](const std::string& txn_id, RawDone done) {
                    Prepared p;
                    {
                      MutexLock lock(&mu_);
                      auto it = prepared_.find(txn_id);
                      if (it == prepared_.end()) {
                        done(absl::NotFoundError(absl::StrCat(
                            "transaction ", txn_id.substr(0, kMaxTxnIdBytes),
                            " is not prepared on shard ", cluster_->self(),
                            " (aborted or timed out)")));
                        return;
                      }
                      p = std::move(it->second);
                      prepared_.erase(it);
                    }
                    const int64_t id = p.layer->id();
                    const uint64_t bytes = p.layer->bytes();
                    std::shared_ptr<const Layer> layer = p.layer;
                    absl::Status s =
                        layers_->Commit(p.ticket, std::move(p.layer));
                    if (s.ok() && p.on_commit) p.on_commit(layer);
                    if (s.ok()) {
                      LogInfo(absl::StrCat("layer ", id, " committed on shard ",
                                           cluster_->self(), ": ", bytes,
                                           " bytes held here"));
                    }
                    done(s);
                  });
}

grpc::ServerUnaryReactor* PeerService::Abort(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kAbort)) {
    return refused;
  }
  return ServeTxn(
      context, request, response,
      [this](const std::string& txn_id, RawDone done) {
        // The empty id is the coordinators' reachability ping.
        if (txn_id.empty()) {
          done(absl::OkStatus());
          return;
        }
        std::shared_ptr<PopulateTicket> staging;
        {
          MutexLock lock(&mu_);
          RememberAborted(txn_id);
          auto it = prepared_.find(txn_id);
          if (it != prepared_.end()) {
            it->second.layer->ReleaseStorage();
            layers_->Abandon(it->second.ticket);
            prepared_.erase(it);
          }
          auto open = staging_txns_.find(txn_id);
          if (open != staging_txns_.end() && open->second.setting_up) {
            // Its header is being handled: answered by
            // ReleaseTxn once the stream let go of the layer.
            open->second.waiting_aborts.push_back(std::move(done));
            return;
          }
          if (open != staging_txns_.end()) {
            staging = std::move(open->second.ticket);
            staging_txns_.erase(open);
          }
        }
        // A stream the coordinator cancelled may not have seen
        // the cancellation yet: free its layer id now and end
        // it, so the coordinator's next populate of the id is
        // not refused as "being populated".
        if (staging != nullptr) layers_->AbortPopulate(staging);
        done(absl::OkStatus());
      });
}

grpc::ServerUnaryReactor* PeerService::Gather(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kGather)) {
    return refused;
  }
  auto* reactor = context->DefaultReactor();
  internal::v1::GatherRequest request;
  grpc::ByteBuffer parse_copy(*request_bytes);  // shares slices
  if (!grpc::SerializationTraits<internal::v1::GatherRequest>::Deserialize(
           &parse_copy, &request)
           .ok()) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "the request does not parse as engram.internal.v1.GatherRequest"));
    return reactor;
  }
  std::shared_ptr<const Layer> layer = layers_->Find(request.layer_id());
  if (layer == nullptr) {
    reactor->Finish(ToGrpcStatus(Missing(request.layer_id())));
    return reactor;
  }
  if (absl::Status s =
          CheckGather(request, *layer, cluster_->placement(), cluster_->self(),
                      limits_.max_rows, limits_.max_message_bytes);
      !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  if (request.token_model() != 0) {
    if (absl::Status s = CheckTokenModel(*layer, request.token_model());
        !s.ok()) {
      reactor->Finish(ToGrpcStatus(s));
      return reactor;
    }
  }
  const int n = request.row_ids_size();
  const uint64_t data_bytes =
      static_cast<uint64_t>(n) * layer->layout().row_bytes();
  std::shared_ptr<PendingResponses::Charge> charge;
  if (limits_.pending != nullptr) {
    auto reserved = limits_.pending->Reserve(
        *context, static_cast<int64_t>(data_bytes + 16));
    if (!reserved.ok()) {
      reactor->Finish(ToGrpcStatus(reserved.status()));
      return reactor;
    }
    charge = *std::move(reserved);
  }
  const size_t header_bytes = wire::GatherResponseHeaderSize(data_bytes);
  auto* buffer = static_cast<uint8_t*>(std::malloc(header_bytes + data_bytes));
  if (buffer == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "cannot allocate the gather response"));
    return reactor;
  }
  wire::EncodeGatherResponseHeader(data_bytes, buffer);
  // Copies the rows and finishes; big gathers run on the pool, not on the
  // reactor thread.
  auto copy = [reactor, response, layer, buffer, header_bytes, data_bytes, n,
               charge = std::move(charge),
               req = std::make_shared<internal::v1::GatherRequest>(
                   std::move(request))]() mutable {
    GatherRowsAt(*layer, req->heads().data(), req->row_ids().data(), n,
                 buffer + header_bytes);
    grpc::Slice slice =
        PendingResponses::ChargedSlice(buffer, header_bytes + data_bytes,
                                       &std::free, buffer, std::move(charge));
    *response = grpc::ByteBuffer(&slice, 1);
    reactor->Finish(grpc::Status::OK);
  };
  if (n >= kParallelGatherMinRows && limits_.pool != nullptr) {
    limits_.pool->Submit(std::move(copy));
  } else {
    copy();
  }
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::Transport(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  Caller caller;
  if (auto* refused =
          RefuseUnary(auth_, context, Method::kTransport, &caller)) {
    return refused;
  }
  // UCX access (worker address, rkeys) lets its holder post one-sided
  // operations to this process, and not every UCX transport enforces the
  // read-only registration: shards only. Readers attach segments read-only.
  const ExportAccess access = (caller.rights & kRightPeer) != 0
                                  ? ExportAccess::kUcx
                                  : ExportAccess::kAttachOnly;
  return ServeRaw<internal::v1::TransportRequest,
                  internal::v1::TransportResponse>(
      context, request, response,
      [this, access](const internal::v1::TransportRequest& req,
                     internal::v1::TransportResponse* reply, RawDone done) {
        done(DescribeExports(req.layer_id(), access, reply));
      });
}

absl::Status PeerService::Missing(int64_t layer_id) const {
  std::shared_ptr<const PopulateTicket> recovering =
      layers_->FindRecovering(layer_id);
  if (recovering == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "layer ", layer_id, " not found on shard ", cluster_->self()));
  }
  // UNAVAILABLE: readers fail over to another replica.
  if (recovering->unrecoverable()) {
    return absl::UnavailableError(absl::StrCat(
        "shard ", cluster_->self(), " lost its rows of layer ", layer_id,
        " in a restart and no replica holds them; remove the layer and "
        "populate it again"));
  }
  return absl::UnavailableError(
      absl::StrCat("shard ", cluster_->self(), " is recovering layer ",
                   layer_id, " (copying its rows from replicas)"));
}

absl::Status PeerService::DescribeExports(
    int64_t layer_id, ExportAccess access,
    internal::v1::TransportResponse* response) const {
  if (transport_ == nullptr) {
    return absl::FailedPreconditionError(
        "this shard exports no rows for remote reads (--peer_read=gather or "
        "built without UCX)");
  }
  std::shared_ptr<const Layer> layer = layers_->Find(layer_id);
  if (layer == nullptr) return Missing(layer_id);
  DescribeLayerExports(*layer, *transport_, access, response);
  if (hashes_ != nullptr) {
    response->set_token_model(hashes_->TokenModelOf(*layer));
  }
  return absl::OkStatus();
}

absl::Status PeerService::CheckTokenModel(const Layer& layer,
                                          uint64_t token_model) const {
  std::optional<TokenHashes::Entry> model =
      hashes_ != nullptr ? hashes_->Find(layer.id()) : std::nullopt;
  // A shard that never learnt the layer's model (restarted without
  // --load) serves: its rows came from the same cluster-wide populate or
  // load as every other shard's, and a shard that knew the model says
  // when the layer changed since.
  if (!model) return absl::OkStatus();
  if (absl::Status s = TokenHashes::CheckCurrent(*model, layer); !s.ok()) {
    return WithContext(s, absl::StrCat("shard ", cluster_->self()));
  }
  if (model->hasher->TokenModel(model->engram_layer) != token_model) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer.id(), " on shard ", cluster_->self(),
        " was loaded with another model hash than the ids were hashed with: "
        "fetch its model again"));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PeerService::TokenModel(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kTokenModel)) {
    return refused;
  }
  return ServeRaw<internal::v1::TokenModelRequest,
                  internal::v1::TokenModelResponse>(
      context, request, response,
      [this](const internal::v1::TokenModelRequest& req,
             internal::v1::TokenModelResponse* reply, RawDone done) {
        std::shared_ptr<const Layer> layer = layers_->Find(req.layer_id());
        if (layer == nullptr) return done(Missing(req.layer_id()));
        std::optional<TokenHashes::Entry> model =
            hashes_ != nullptr ? hashes_->Find(layer->id()) : std::nullopt;
        // No model known here: an empty answer (another shard may know).
        if (!model) return done(absl::OkStatus());
        if (absl::Status s = TokenHashes::CheckCurrent(*model, *layer);
            !s.ok()) {
          return done(s);
        }
        const EngramHasher& hasher = *model->hasher;
        const EngramHashConfig& c = hasher.config();
        internal::v1::HashConfig* config = reply->mutable_config();
        config->mutable_layer_ids()->Add(c.layer_ids.begin(),
                                         c.layer_ids.end());
        config->set_max_ngram(c.max_ngram);
        config->set_heads(c.heads);
        config->mutable_order_vocab()->Add(c.order_vocab.begin(),
                                           c.order_vocab.end());
        config->mutable_num_embeddings()->Add(c.num_embeddings.begin(),
                                              c.num_embeddings.end());
        config->set_pad_token_id(c.pad_token_id);
        config->set_compressed_vocab(c.compressed_vocab);
        config->set_has_image_token(c.image_token_id.has_value());
        config->set_image_token_id(c.image_token_id.value_or(0));
        std::span<const int64_t> map = hasher.token_map();
        reply->set_token_map(map.data(), map.size_bytes());
        reply->set_engram_layer(model->engram_layer);
        reply->set_token_model(hasher.TokenModel(model->engram_layer));
        done(absl::OkStatus());
      });
}

grpc::ServerBidiReactor<internal::v1::WatchLayerRequest,
                        internal::v1::LayerMapping>*
PeerService::WatchLayer(grpc::CallbackServerContext* context) {
  // CUDA IPC maps the GPU copy writable in the reader (there is no read-only
  // import): its handles go only to callers who may change the layer.
  // Who, for the per-caller stream cap: the credential's name, or the
  // address (without the port) of a caller that presented none.
  std::string who = context->peer().substr(0, context->peer().rfind(':'));
  absl::StatusOr<Caller> caller =
      Authorize(auth_, *context, Method::kWatchLayer);
  if (!caller.ok()) {
    return new RefusedBidiStream<internal::v1::WatchLayerRequest,
                                 internal::v1::LayerMapping>(
        ToGrpcStatus(caller.status()));
  }
  const bool may_share_gpu = (caller->rights & kRightWrite) != 0;
  if (auth_ != nullptr && auth_->credentials_configured()) who = caller->name;
  return watch_hub_->Start(context, may_share_gpu, std::move(who));
}

grpc::ServerUnaryReactor* PeerService::RemoveLocal(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kRemoveLocal)) {
    return refused;
  }
  return ServeRaw<v1::RemoveRequest, v1::RemoveResponse>(
      context, request, response,
      [this](const v1::RemoveRequest& req, v1::RemoveResponse* reply,
             RawDone done) {
        absl::StatusOr<int> removed =
            layers_->Remove(req.layer_id(), req.force());
        if (removed.ok()) reply->set_tables_removed(*removed);
        done(removed.status());
      });
}

grpc::ServerUnaryReactor* PeerService::StageFiles(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = RefuseUnary(auth_, context, Method::kStageFiles)) {
    return refused;
  }
  return ServeRaw<internal::v1::StageFilesRequest, internal::v1::StageResponse>(
      context, request, response,
      [this](const internal::v1::StageFilesRequest& req,
             internal::v1::StageResponse* resp, RawDone done) {
        const std::string& txn = req.txn_id();
        if (txn.empty() || txn.size() > kMaxTxnIdBytes) {
          done(absl::InvalidArgumentError(
              absl::StrCat("txn_id must be 1 to ", kMaxTxnIdBytes,
                           " bytes; got ", txn.size())));
          return;
        }
        if (loader_ == nullptr) {
          done(absl::FailedPreconditionError("this shard loads no files"));
          return;
        }
        if (absl::Status s = ClaimTxn(txn, /*stream=*/false); !s.ok()) {
          done(s);
          return;
        }
        loader_->StageForPeer(
            req.manifest_path(), req.manifest_json(), req.layer_id(),
            [this, txn, resp, done = std::move(done)](
                absl::StatusOr<TableLoader::Staged> staged) {
              if (!staged.ok()) {
                ReleaseTxn(txn);
                done(staged.status());
                return;
              }
              resp->set_rows_staged(staged->stager->rows_received());
              done(AddPrepared(txn, staged->stager->TakeTicket(),
                               std::move(staged->layer),
                               std::move(staged->on_commit)));
            });
      });
}

}  // namespace engram
