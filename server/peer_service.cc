#include "server/peer_service.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "server/engram_service.h"
#include "server/log.h"
#include "store/layer_builder.h"

namespace engram {
namespace {

using internal::v1::StageRequest;

// One Stage stream: this shard's rows of one cluster populate. gRPC
// serializes its callbacks; only the abort hook (TryCancel) comes from
// another thread.
class StageReactor : public grpc::ServerReadReactor<StageRequest> {
 public:
  StageReactor(grpc::CallbackServerContext* context,
               internal::v1::StageResponse* response, PeerService* service)
      : context_(context), response_(response), service_(service) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      EndOfStream();
      return;
    }
    absl::Status s;
    if (request_.has_header()) {
      s = OnHeader(request_.header());
    } else if (request_.has_chunk()) {
      s = builder_ == nullptr
              ? absl::InvalidArgumentError("Stage needs a header first")
              : builder_->AddChunk(request_.chunk().head(),
                                   request_.chunk().row_offset(),
                                   request_.chunk().data());
    } else {
      s = absl::InvalidArgumentError("empty StageRequest");
    }
    if (s.ok() && ticket_ != nullptr && ticket_->aborted()) {
      s = absl::AbortedError("populate aborted by a forced Remove");
    }
    if (!s.ok()) {
      Done(s);
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    if (ticket_ != nullptr) service_->layers()->Abandon(ticket_);
    delete this;
  }

 private:
  absl::Status OnHeader(const internal::v1::StageHeader& header) {
    if (builder_ != nullptr)
      return absl::InvalidArgumentError("second Stage header");
    txn_id_ = header.txn_id();
    layer_id_ = header.layer_id();
    absl::StatusOr<LayerLayout> layout = LayoutFromConfig(header.config());
    if (!layout.ok()) return layout.status();
    auto ticket = service_->layers()->BeginPopulate(
        layer_id_, [ctx = context_] { ctx->TryCancel(); });
    if (!ticket.ok()) return ticket.status();
    ticket_ = *std::move(ticket);
    const ClusterContext& cluster = *service_->cluster();
    std::vector<std::vector<RowRange>> owned(layout->num_heads());
    for (int h = 0; h < layout->num_heads(); ++h) {
      owned[h] = cluster.placement().OwnedRanges(
          layer_id_, h, layout->table_vocab_sizes[h], cluster.self());
    }
    auto builder = LayerBuilder::Create(
        layer_id_, *std::move(layout), service_->budget(),
        service_->pin_memory(), std::move(owned), service_->exporter());
    if (!builder.ok()) return builder.status();
    builder_ = *std::move(builder);
    return absl::OkStatus();
  }

  void EndOfStream() {
    if (context_->IsCancelled()) {
      Done(absl::CancelledError("the coordinator cancelled the stage stream"));
      return;
    }
    if (builder_ == nullptr) {
      Done(absl::InvalidArgumentError("Stage stream without a header"));
      return;
    }
    auto layer = builder_->Finish();
    if (!layer.ok()) {
      Done(layer.status());
      return;
    }
    response_->set_rows_staged(builder_->rows_received());
    service_->AddPrepared(txn_id_, std::move(ticket_), *std::move(layer));
    ticket_.reset();
    Finish(grpc::Status::OK);
  }

  void Done(const absl::Status& status) {
    builder_.reset();
    if (ticket_ != nullptr) {
      service_->layers()->Abandon(ticket_);
      ticket_.reset();
    }
    Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  internal::v1::StageResponse* const response_;
  PeerService* const service_;
  StageRequest request_;
  std::string txn_id_;
  int64_t layer_id_ = 0;
  std::shared_ptr<PopulateTicket> ticket_;
  std::unique_ptr<LayerBuilder> builder_;
};

}  // namespace

PeerService::PeerService(LayerRegistry* layers, MemoryBudget* budget,
                         ClusterContext* cluster, bool pin_memory,
                         transport::UcxEngine* transport)
    : layers_(layers),
      budget_(budget),
      cluster_(cluster),
      pin_memory_(pin_memory),
      transport_(transport) {
  if (transport_ != nullptr) exporter_ = transport_->Mapper();
  janitor_ = std::thread([this] { JanitorLoop(); });
}

PeerService::~PeerService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  janitor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [txn, p] : prepared_) layers_->Abandon(p.ticket);
}

void PeerService::AddPrepared(const std::string& txn_id,
                              std::shared_ptr<PopulateTicket> ticket,
                              std::shared_ptr<Layer> layer) {
  const auto timeout =
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(cluster_->staged_timeout_seconds()));
  std::lock_guard<std::mutex> lock(mu_);
  prepared_[txn_id] = {std::move(ticket), std::move(layer),
                       std::chrono::steady_clock::now() + timeout};
}

void PeerService::JanitorLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, std::chrono::seconds(1),
                         [this] { return stopping_; })) {
    const auto now = std::chrono::steady_clock::now();
    for (auto it = prepared_.begin(); it != prepared_.end();) {
      if (it->second.expires <= now) {
        LogWarning(absl::StrCat("staged rows of layer ", it->second.layer->id(),
                                " (txn ", it->first,
                                ") dropped: no commit from the coordinator"));
        layers_->Abandon(it->second.ticket);
        it = prepared_.erase(it);
      } else {
        ++it;
      }
    }
  }
}

grpc::ServerReadReactor<StageRequest>* PeerService::Stage(
    grpc::CallbackServerContext* context,
    internal::v1::StageResponse* response) {
  return new StageReactor(context, response, this);
}

grpc::ServerUnaryReactor* PeerService::Commit(
    grpc::CallbackServerContext* context,
    const internal::v1::TxnRequest* request, internal::v1::TxnResponse*) {
  auto* reactor = context->DefaultReactor();
  Prepared p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = prepared_.find(request->txn_id());
    if (it == prepared_.end()) {
      reactor->Finish(grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("transaction ", request->txn_id(),
                       " is not prepared on shard ", cluster_->self(),
                       " (aborted or timed out)")));
      return reactor;
    }
    p = std::move(it->second);
    prepared_.erase(it);
  }
  const int64_t id = p.layer->id();
  const uint64_t bytes = p.layer->bytes();
  absl::Status s = layers_->Commit(p.ticket, std::move(p.layer));
  if (s.ok()) {
    LogInfo(absl::StrCat("layer ", id, " committed on shard ", cluster_->self(),
                         ": ", bytes, " bytes held here"));
  }
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::Abort(
    grpc::CallbackServerContext* context,
    const internal::v1::TxnRequest* request, internal::v1::TxnResponse*) {
  auto* reactor = context->DefaultReactor();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = prepared_.find(request->txn_id());
    if (it != prepared_.end()) {
      layers_->Abandon(it->second.ticket);
      prepared_.erase(it);
    }
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::Gather(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response) {
  auto* reactor = context->DefaultReactor();
  internal::v1::GatherRequest request;
  grpc::ByteBuffer parse_copy(*request_bytes);  // shares slices
  if (!grpc::SerializationTraits<internal::v1::GatherRequest>::Deserialize(
           &parse_copy, &request)
           .ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "request is not a valid GatherRequest"));
    return reactor;
  }
  std::shared_ptr<const Layer> layer = layers_->Find(request.layer_id());
  if (layer == nullptr) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("layer ", request.layer_id(),
                                  " not found on shard ", cluster_->self())));
    return reactor;
  }
  const LayerLayout& layout = layer->layout();
  const int n = request.row_ids_size();
  if (request.heads_size() != n) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "heads and row_ids differ in length"));
    return reactor;
  }
  for (int i = 0; i < n; ++i) {
    const int h = request.heads(i);
    const int64_t id = request.row_ids(i);
    if (h < 0 || h >= layout.num_heads() || id < 0 ||
        id >= layout.table_vocab_sizes[h] ||
        !cluster_->placement().Owns(cluster_->self(), layer->id(), h,
                                    layout.table_vocab_sizes[h], id)) {
      reactor->Finish(grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat("shard ", cluster_->self(), " does not hold row ", id,
                       " of head ", h, " of layer ", layer->id())));
      return reactor;
    }
  }
  // GatherResponse{bytes data = 1}: tag 0x0a, varint length, the rows.
  const size_t row_bytes = layout.row_bytes();
  const size_t data_bytes = static_cast<size_t>(n) * row_bytes;
  uint8_t header[11];
  size_t header_bytes = 0;
  header[header_bytes++] = 0x0a;
  for (size_t v = data_bytes;; v >>= 7) {
    header[header_bytes++] =
        static_cast<uint8_t>((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    if (v < 0x80) break;
  }
  auto* buffer = static_cast<uint8_t*>(std::malloc(header_bytes + data_bytes));
  if (buffer == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "cannot allocate the gather response"));
    return reactor;
  }
  std::memcpy(buffer, header, header_bytes);
  uint8_t* out = buffer + header_bytes;
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + i * row_bytes,
                layer->table(request.heads(i)) + request.row_ids(i) * row_bytes,
                row_bytes);
  }
  grpc::Slice slice(buffer, header_bytes + data_bytes, &std::free);
  *response = grpc::ByteBuffer(&slice, 1);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::Transport(
    grpc::CallbackServerContext* context,
    const internal::v1::TransportRequest* request,
    internal::v1::TransportResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (transport_ == nullptr) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        "this shard exports no rows for remote reads (--peer_read=gather or "
        "built without UCX)"));
    return reactor;
  }
  std::shared_ptr<const Layer> layer = layers_->Find(request->layer_id());
  if (layer == nullptr) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("layer ", request->layer_id(),
                                  " is not committed on this shard")));
    return reactor;
  }
  response->set_worker_address(transport_->worker_address());
  response->set_control_descriptor(transport_->control_descriptor());
  for (int h = 0; h < layer->layout().num_heads(); ++h) {
    internal::v1::HeadExports* head = response->add_heads();
    for (const ExportedRange& e : layer->exports(h)) {
      internal::v1::ExportedRange* r = head->add_ranges();
      r->set_offset(e.offset);
      r->set_length(e.length);
      r->set_access(e.descriptor);
    }
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::RemoveLocal(
    grpc::CallbackServerContext* context, const v1::RemoveRequest* request,
    v1::RemoveResponse* response) {
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<int> removed =
      layers_->Remove(request->layer_id(), request->force());
  if (removed.ok()) response->set_tables_removed(*removed);
  reactor->Finish(ToGrpcStatus(removed.status()));
  return reactor;
}

}  // namespace engram
