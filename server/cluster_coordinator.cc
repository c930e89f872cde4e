#include "server/cluster_coordinator.h"

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/populate_fanout.h"
#include "proto/convert.h"
#include "proto/wire_format.h"
#include "server/log.h"
#include "server/read_stream.h"

namespace engram {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPeerReadTimeout = std::chrono::seconds(3);
constexpr auto kTxnTimeout = std::chrono::seconds(10);
constexpr char kPeerGatherMethod[] = "/engram.internal.v1.EngramPeer/Gather";

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

bool PeerUnreachable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE ||
         code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// ---------------------------------------------------------------- populate

// Client stream in, one Stage stream per shard out. Each message is handed
// to the coordinator's populate workers (blocking peer writes never run on
// a reactor), and the next is asked for only after the owners took it:
// backpressure, and no thread of its own. Lives until both gRPC (OnDone)
// and any running task have let go of it.
class ClusterPopulateReactor : public EndableReadReactor<v1::PopulateRequest> {
 public:
  ClusterPopulateReactor(grpc::CallbackServerContext* context,
                         v1::PopulateResponse* response, ClusterCoordinator* c)
      : EndableReadReactor(c->watchdog()),
        context_(context),
        response_(response),
        coordinator_(c),
        cluster_(c->cluster()) {
    ReadNext(&request_);
  }

  void OnReadDone(bool ok) override {
    MarkBusy();
    refs_.fetch_add(1, std::memory_order_relaxed);
    coordinator_->populate_workers()->Submit([this, ok] {
      Work(ok);
      Unref();
    });
  }

  void OnDone() override {
    Unwatch();
    Unref();
  }

 private:
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // One message (or the end of the stream), on a populate worker.
  void Work(bool ok) {
    if (!ok || finished()) {
      Complete(EndOfStream());
      return;
    }
    absl::Status s;
    switch (request_.kind_case()) {
      case v1::PopulateRequest::kHeader:
        s = OnHeader(request_.header());
        break;
      case v1::PopulateRequest::kChunk:
        s = OnChunk(request_.chunk());
        break;
      default:
        s = absl::InvalidArgumentError(
            "a PopulateRequest must set header or chunk; this one sets "
            "neither");
    }
    if (!s.ok()) {
      Complete(s);
      return;
    }
    ReadNext(&request_);
  }

  absl::Status OnHeader(const v1::PopulateHeader& header) {
    if (fanout_ != nullptr) {
      return absl::InvalidArgumentError(
          "a second PopulateHeader arrived; send one header, then chunks");
    }
    layer_id_ = header.layer_id();
    absl::StatusOr<LayerLayout> layout = LayoutFromConfig(header.config());
    if (!layout.ok()) return layout.status();
    layout_ = *std::move(layout);
    if (coordinator_->layers()->Find(layer_id_) != nullptr) {
      return absl::AlreadyExistsError(absl::StrCat(
          "layer ", layer_id_,
          " already exists; populate is create-only (Remove it first)"));
    }
    std::vector<internal::v1::EngramPeer::Stub*> stubs;
    for (int s = 0; s < cluster_->size(); ++s)
      stubs.push_back(cluster_->stub(s));
    fanout_ = std::make_unique<PopulateFanout>(
        std::move(stubs), cluster_->placement(),
        [c = cluster_](int s) { c->MarkDown(s); });
    return fanout_->Begin(layer_id_, layout_);
  }

  absl::Status OnChunk(const v1::TableChunk& chunk) {
    if (fanout_ == nullptr) {
      return absl::InvalidArgumentError(
          "the first Populate message must be a PopulateHeader");
    }
    if (context_->IsCancelled()) {
      return absl::CancelledError("the client cancelled the populate stream");
    }
    metrics_bytes_ += static_cast<int64_t>(chunk.data().size());
    return fanout_->AddChunk(chunk.head(), chunk.row_offset(), chunk.data());
  }

  absl::Status EndOfStream() {
    if (finished()) {
      return absl::DeadlineExceededError(
          "the populate stream went idle and was ended");
    }
    if (context_->IsCancelled()) {
      return absl::CancelledError("the client cancelled the populate stream");
    }
    if (fanout_ == nullptr) {
      return absl::InvalidArgumentError(
          "the populate stream ended without a PopulateHeader");
    }
    return fanout_->Commit();
  }

  void Complete(const absl::Status& status) {
    coordinator_->metrics()->RecordPopulateBytes(metrics_bytes_);
    if (!status.ok()) {
      if (fanout_ != nullptr) fanout_->Abort();
      LogWarning(absl::StrCat(
          "cluster populate of layer ", layer_id_,
          " failed, nothing kept on any shard: ", status.ToString()));
    } else {
      FillLayerInfo(layer_id_, layout_, response_->mutable_layer());
      LogInfo(absl::StrCat("layer ", layer_id_, " committed on all ",
                           cluster_->size(), " shards (txn ", fanout_->txn_id(),
                           ")"));
    }
    coordinator_->metrics()->RecordCall(
        Rpc::kPopulate, static_cast<grpc::StatusCode>(status.code()));
    FinishOnce(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  v1::PopulateResponse* const response_;
  ClusterCoordinator* const coordinator_;
  ClusterContext* const cluster_;
  std::atomic<int> refs_{1};  // gRPC's, until OnDone; +1 per running task
  v1::PopulateRequest request_;
  int64_t layer_id_ = 0;
  LayerLayout layout_;
  std::unique_ptr<PopulateFanout> fanout_;
  int64_t metrics_bytes_ = 0;
};

// ------------------------------------------------------------------ lookup

// One distributed gather: positions grouped by the shard asked for them;
// a failed or slow shard's positions move to the next owner.
struct GatherFanout : std::enable_shared_from_this<GatherFanout> {
  ClusterContext* cluster;
  ServerMetrics* metrics;
  PeerRmaReader* rma;  // null: gather only
  std::shared_ptr<const Layer> layer;
  const int64_t* ids;
  DType out_dtype;
  uint8_t* out;
  size_t out_row_bytes;
  std::function<void(absl::Status)> done;
  std::atomic<int> outstanding{1};  // the starter's own reference
  std::mutex mu;
  std::vector<std::string> errors;  // guarded by mu
  bool layer_missing = false;       // guarded by mu: a peer lacks the layer

  struct Position {
    int64_t index;
    int replica;  // which owner of the row's range is being asked
  };

  void WriteRow(int64_t index, const uint8_t* src) {
    const LayerLayout& l = layer->layout();
    uint8_t* dst = out + index * out_row_bytes;
    if (out_dtype == l.dtype) {
      std::memcpy(dst, src, out_row_bytes);
    } else {
      ConvertElements(src, l.dtype, dst, out_dtype,
                      static_cast<size_t>(l.embedding_dim));
    }
  }

  // Sends each position to its next live owner, starting at its replica.
  void Route(std::vector<Position> positions) {
    const LayerLayout& l = layer->layout();
    const int heads = l.num_heads();
    const Placement& p = cluster->placement();
    std::map<int, std::vector<Position>> by_shard;
    for (Position pos : positions) {
      const int h = static_cast<int>(pos.index % heads);
      const int64_t rows = l.table_vocab_sizes[h];
      const int range = p.RangeOf(rows, ids[pos.index]);
      int chosen = -1;
      for (int r = pos.replica; r < p.replication(); ++r) {
        const int s = p.Owner(layer->id(), h, range, r);
        // A shard recovering the layer does not ask itself.
        if (s == cluster->self() && !layer->has_rows()) continue;
        if (cluster->up(s) || r == p.replication() - 1) {
          chosen = s;
          pos.replica = r;
          break;
        }
      }
      if (chosen < 0) {
        Fail(absl::StrCat("no owner left for row ", ids[pos.index], " of head ",
                          h, " (shard ", cluster->self(),
                          ", this one, restarted without it)"));
        continue;
      }
      by_shard[chosen].push_back(pos);
    }
    for (auto& [shard, list] : by_shard) Send(shard, std::move(list));
  }

  void Send(int shard, std::vector<Position> positions) {
    // A shard marked down is not read even where its memory is still
    // mapped here: the gather path reports it (or fails over).
    if (rma != nullptr && cluster->up(shard)) {
      SendRma(shard, std::move(positions));
    } else {
      SendGather(shard, std::move(positions));
    }
  }

  // One-sided reads into `out` (or a staging block when converting); on
  // any failure the same positions go over the gather path, whose failover
  // handles a dead owner.
  void SendRma(int shard, std::vector<Position> positions) {
    const LayerLayout& l = layer->layout();
    const size_t row_bytes = l.row_bytes();
    std::shared_ptr<std::vector<uint8_t>> staging;
    if (out_dtype != l.dtype) {
      staging =
          std::make_shared<std::vector<uint8_t>>(positions.size() * row_bytes);
    }
    std::vector<PeerRmaReader::Row> rows;
    rows.reserve(positions.size());
    for (size_t j = 0; j < positions.size(); ++j) {
      const int64_t index = positions[j].index;
      rows.push_back({static_cast<int>(index % l.num_heads()), ids[index],
                      staging != nullptr ? staging->data() + j * row_bytes
                                         : out + index * out_row_bytes});
    }
    const Clock::time_point start = Clock::now();
    outstanding.fetch_add(1, std::memory_order_relaxed);
    auto self = shared_from_this();
    auto list = std::make_shared<std::vector<Position>>(std::move(positions));
    rma->Read(
        shard, layer, std::move(rows), start + kPeerReadTimeout,
        [self, shard, list, staging, start](absl::Status s) {
          const size_t rb = self->layer->layout().row_bytes();
          if (s.ok()) {
            if (staging != nullptr) {
              for (size_t j = 0; j < list->size(); ++j)
                self->WriteRow((*list)[j].index, staging->data() + j * rb);
            }
            self->metrics->RecordPeerRead(
                PeerPath::kRma,
                std::chrono::duration<double>(Clock::now() - start).count(),
                list->size() * rb);
          } else {
            if (s.code() != absl::StatusCode::kFailedPrecondition)
              self->metrics->RecordRmaFallback();
            self->SendGather(shard, std::move(*list));
          }
          self->Release();
        });
  }

  void SendGather(int shard, std::vector<Position> positions) {
    const LayerLayout& l = layer->layout();
    // Raw call: the reply's rows are copied once, from the received slices
    // to their places in `out` (no protobuf parse into a string first).
    struct Call {
      grpc::ClientContext context;
      grpc::ByteBuffer request;
      grpc::ByteBuffer response;
      std::vector<Position> positions;
      Clock::time_point start;
    };
    auto call = std::make_shared<Call>();
    call->context.set_deadline(std::chrono::system_clock::now() +
                               kPeerReadTimeout);
    internal::v1::GatherRequest request;
    request.set_layer_id(layer->id());
    request.mutable_heads()->Reserve(static_cast<int>(positions.size()));
    request.mutable_row_ids()->Reserve(static_cast<int>(positions.size()));
    for (Position pos : positions) {
      request.add_heads(static_cast<int32_t>(pos.index % l.num_heads()));
      request.add_row_ids(ids[pos.index]);
    }
    bool own_buffer = false;
    (void)grpc::SerializationTraits<internal::v1::GatherRequest>::Serialize(
        request, &call->request, &own_buffer);
    call->positions = std::move(positions);
    call->start = Clock::now();
    outstanding.fetch_add(1, std::memory_order_relaxed);
    auto self = shared_from_this();
    cluster->generic_stub(shard)->UnaryCall(
        &call->context, kPeerGatherMethod, grpc::StubOptions(), &call->request,
        &call->response, [self, call, shard](grpc::Status status) {
          self->OnReply(shard, *call, status);
          self->Release();
        });
  }

  template <typename CallT>
  void OnReply(int shard, CallT& call, const grpc::Status& status) {
    const size_t row_bytes = layer->layout().row_bytes();
    const size_t expected = call.positions.size() * row_bytes;
    absl::Status decoded = absl::OkStatus();
    if (status.ok()) {
      decoded = wire::ForEachGatheredRow(
          call.response, row_bytes, call.positions.size(),
          [&](size_t j, const uint8_t* row) {
            WriteRow(call.positions[j].index, row);
          });
      if (decoded.ok()) {
        metrics->RecordPeerRead(
            PeerPath::kGather,
            std::chrono::duration<double>(Clock::now() - call.start).count(),
            expected);
        return;
      }
    }
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      // The layer is being removed or is not yet committed everywhere:
      // another owner would say the same.
      std::lock_guard<std::mutex> lock(mu);
      layer_missing = true;
      errors.push_back(
          absl::StrCat("shard ", shard, ": ", status.error_message()));
      return;
    }
    if (PeerUnreachable(status.error_code())) cluster->MarkDown(shard);
    const int replication = cluster->placement().replication();
    std::vector<Position> retry;
    for (Position pos : call.positions) {
      if (pos.replica + 1 < replication)
        retry.push_back({pos.index, pos.replica + 1});
    }
    if (retry.size() == call.positions.size() && !retry.empty()) {
      metrics->RecordFailover();
      Route(std::move(retry));
      return;
    }
    Fail(absl::StrCat(
        "shard ", shard, " (", cluster->address(shard), "): ",
        status.ok() ? std::string(decoded.message()) : status.error_message()));
  }

  void Fail(std::string error) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(std::move(error));
  }

  void Release() {
    if (outstanding.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::vector<std::string> errs;
    bool missing;
    {
      std::lock_guard<std::mutex> lock(mu);
      errs = errors;
      missing = layer_missing;
    }
    if (errs.empty()) {
      done(absl::OkStatus());
    } else if (missing) {
      done(absl::NotFoundError(
          absl::StrCat("layer ", layer->id(),
                       " not found on every shard (being removed or "
                       "populated): ",
                       absl::StrJoin(errs, "; "))));
    } else {
      done(absl::UnavailableError(absl::StrCat(
          "rows of layer ", layer->id(),
          " have no reachable owner: ", absl::StrJoin(errs, "; "))));
    }
  }
};

}  // namespace

ClusterCoordinator::ClusterCoordinator(ClusterContext* cluster,
                                       LayerRegistry* layers,
                                       ServerMetrics* metrics,
                                       PeerRmaReader* rma,
                                       StreamWatchdog* watchdog)
    : cluster_(cluster),
      layers_(layers),
      metrics_(metrics),
      rma_(rma),
      watchdog_(watchdog),
      populate_workers_(kPopulateWorkers) {}

grpc::ServerReadReactor<v1::PopulateRequest>* ClusterCoordinator::NewPopulate(
    grpc::CallbackServerContext* context, v1::PopulateResponse* response) {
  return new ClusterPopulateReactor(context, response, this);
}

void ClusterCoordinator::Gather(std::shared_ptr<const Layer> layer,
                                const int64_t* ids, int64_t n, DType out_dtype,
                                uint8_t* out,
                                std::function<void(absl::Status)> done) {
  auto fan = std::make_shared<GatherFanout>();
  fan->cluster = cluster_;
  fan->metrics = metrics_;
  fan->rma = rma_;
  fan->layer = std::move(layer);
  fan->ids = ids;
  fan->out_dtype = out_dtype;
  fan->out = out;
  fan->out_row_bytes = static_cast<size_t>(fan->layer->layout().embedding_dim) *
                       DTypeSize(out_dtype);
  fan->done = std::move(done);
  const LayerLayout& l = fan->layer->layout();
  const int heads = l.num_heads();
  const size_t row_bytes = l.row_bytes();
  std::vector<GatherFanout::Position> remote;
  for (int64_t i = 0; i < n; ++i) {
    const int h = static_cast<int>(i % heads);
    if (fan->layer->has_rows() &&
        cluster_->placement().Owns(cluster_->self(), fan->layer->id(), h,
                                   l.table_vocab_sizes[h], ids[i])) {
      fan->WriteRow(i, fan->layer->table(h) + ids[i] * row_bytes);
    } else {
      remote.push_back({i, 0});
    }
  }
  if (!remote.empty()) fan->Route(std::move(remote));
  fan->Release();  // drop the starter's reference
}

void ClusterCoordinator::Remove(int64_t layer_id, bool force,
                                std::function<void(absl::StatusOr<int>)> done) {
  struct State {
    std::mutex mu;
    int pending;
    int removed = 0;
    int not_found = 0;
    std::vector<std::string> unreachable;
    absl::Status precondition;
    std::function<void(absl::StatusOr<int>)> done;
  };
  auto state = std::make_shared<State>();
  state->pending = cluster_->size();
  state->done = std::move(done);
  for (int s = 0; s < cluster_->size(); ++s) {
    struct Call {
      grpc::ClientContext context;
      v1::RemoveRequest request;
      v1::RemoveResponse response;
    };
    auto call = std::make_shared<Call>();
    call->context.set_deadline(In(kTxnTimeout));
    call->request.set_layer_id(layer_id);
    call->request.set_force(force);
    cluster_->stub(s)->async()->RemoveLocal(
        &call->context, &call->request, &call->response,
        [this, state, call, s, layer_id](grpc::Status st) {
          std::unique_lock<std::mutex> lock(state->mu);
          if (st.ok()) {
            state->removed =
                std::max(state->removed, call->response.tables_removed());
          } else if (st.error_code() == grpc::StatusCode::NOT_FOUND) {
            ++state->not_found;
          } else if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
            state->precondition =
                absl::FailedPreconditionError(st.error_message());
          } else {
            state->unreachable.push_back(
                absl::StrCat("shard ", s, " (", cluster_->address(s),
                             "): ", st.error_message()));
          }
          if (--state->pending > 0) return;
          lock.unlock();
          absl::StatusOr<int> result = state->removed;
          if (!state->unreachable.empty()) {
            result = absl::UnavailableError(
                absl::StrCat("layer ", layer_id,
                             " removed from the reachable shards; not from ",
                             absl::StrJoin(state->unreachable, "; ")));
          } else if (!state->precondition.ok()) {
            result = state->precondition;
          } else if (state->not_found == cluster_->size()) {
            result = absl::NotFoundError(
                absl::StrCat("layer ", layer_id, " not found"));
          }
          state->done(std::move(result));
        });
  }
}

}  // namespace engram
