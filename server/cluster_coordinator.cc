#include "server/cluster_coordinator.h"

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cluster/populate_fanout.h"
#include "cluster/row_router.h"
#include "common/lookup_plan.h"
#include "proto/convert.h"
#include "proto/wire_format.h"
#include "server/log.h"
#include "server/populate_reactor.h"
#include "server/read_stream.h"

namespace engram {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPeerReadTimeout = std::chrono::seconds(3);
constexpr auto kTxnTimeout = std::chrono::seconds(10);

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
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
    absl::Status s = DispatchPopulateRequest(
        request_, [this](const auto& h) { return OnHeader(h); },
        [this](const auto& c) { return OnChunk(c); });
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
    if (!header.replace() &&
        coordinator_->layers()->Find(layer_id_) != nullptr) {
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
    return fanout_->Begin(layer_id_, layout_, header.replace());
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
        Method::kPopulate, static_cast<grpc::StatusCode>(status.code()));
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

// Reads a shard's rows for the coordinator: one-sided (rma) while the shard
// is up and exports them, else (and on any rma failure) the gather RPC.
// Records the peer-read metrics of both. One per lookup (it holds the
// coordinator's copy of the layer, which keys the rma cache).
class CoordinatorReader final : public ShardReader {
 public:
  CoordinatorReader(ClusterContext* cluster, ServerMetrics* metrics,
                    PeerRmaReader* rma, std::shared_ptr<const Layer> layer)
      : cluster_(cluster),
        metrics_(metrics),
        rma_(rma),
        layer_(std::move(layer)) {}

  void Read(int shard, const ShardRead& read,
            std::function<void(absl::Status)> done) override {
    // A shard marked down is not read even where its memory is still
    // mapped here: the gather path reports it (or fails over).
    if (rma_ != nullptr && cluster_->up(shard) && layer_->has_rows()) {
      ReadRma(shard, read, std::move(done));
    } else {
      ReadGather(shard, read, std::move(done));
    }
  }

 private:
  void ReadGather(int shard, const ShardRead& read,
                  std::function<void(absl::Status)> done) {
    const Clock::time_point start = Clock::now();
    const size_t bytes = read.size() * read.layout().row_bytes();
    GatherRowsRpc(
        cluster_->generic_stub(shard),
        std::chrono::system_clock::now() + kPeerReadTimeout, read,
        [metrics = metrics_, start, bytes,
         done = std::move(done)](absl::Status s) {
          if (s.ok()) {
            metrics->RecordPeerRead(
                PeerPath::kGather,
                std::chrono::duration<double>(Clock::now() - start).count(),
                bytes);
          }
          done(std::move(s));
        });
  }

  // Straight into the output, or into staging when converting.
  void ReadRma(int shard, const ShardRead& read,
               std::function<void(absl::Status)> done) {
    const size_t row_bytes = read.layout().row_bytes();
    std::shared_ptr<std::vector<uint8_t>> staging;
    if (read.size() > 0 && read.dst(0) == nullptr) {
      staging = std::make_shared<std::vector<uint8_t>>(read.size() * row_bytes);
    }
    std::vector<PeerRmaReader::Row> rows;
    rows.reserve(read.size());
    for (size_t j = 0; j < read.size(); ++j) {
      rows.push_back(
          {read.head(j), read.row(j),
           staging != nullptr ? staging->data() + j * row_bytes : read.dst(j)});
    }
    const Clock::time_point start = Clock::now();
    rma_->Read(
        shard, layer_, std::move(rows), read.token_model(),
        start + kPeerReadTimeout,
        [this, shard, &read, staging, start, row_bytes,
         done = std::move(done)](absl::Status s) mutable {
          if (!s.ok()) {
            if (s.code() != absl::StatusCode::kFailedPrecondition)
              metrics_->RecordRmaFallback();
            ReadGather(shard, read, std::move(done));
            return;
          }
          if (staging != nullptr) {
            for (size_t j = 0; j < read.size(); ++j)
              read.Put(j, staging->data() + j * row_bytes);
          }
          metrics_->RecordPeerRead(
              PeerPath::kRma,
              std::chrono::duration<double>(Clock::now() - start).count(),
              read.size() * row_bytes);
          done(absl::OkStatus());
        });
  }

  ClusterContext* const cluster_;
  ServerMetrics* const metrics_;
  PeerRmaReader* const rma_;
  const std::shared_ptr<const Layer> layer_;
};

}  // namespace

std::string ClusterCoordinator::States::Name(int shard) const {
  return absl::StrCat("shard ", shard, " (", cluster->address(shard), ")");
}

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
      states_(cluster),
      router_(&cluster->placement(), &states_,
              [metrics] { metrics->RecordFailover(); }),
      populate_workers_(kPopulateWorkers) {}

grpc::ServerReadReactor<v1::PopulateRequest>* ClusterCoordinator::NewPopulate(
    grpc::CallbackServerContext* context, v1::PopulateResponse* response) {
  return new ClusterPopulateReactor(context, response, this);
}

void ClusterCoordinator::Gather(std::shared_ptr<const Layer> layer, RowIds ids,
                                int64_t n, DType out_dtype, uint8_t* out,
                                std::function<void(absl::Status)> done,
                                uint64_t token_model) {
  const LayerLayout& l = layer->layout();
  const int heads = l.num_heads();
  const size_t row_bytes = l.row_bytes();
  const LookupPlan plan = RowPlan(l, out_dtype);
  // This shard's own rows are copied here; the rest go through the router.
  // A shard recovering the layer holds none and never asks itself.
  std::vector<int64_t> remote;
  for (int64_t i = 0; i < n; ++i) {
    const int h = static_cast<int>(ids.head(i, heads));
    const int64_t row = ids.rows[i];
    if (layer->has_rows() &&
        cluster_->placement().Owns(cluster_->self(), layer->id(), h,
                                   l.table_vocab_sizes[h], row)) {
      plan.PutRow(layer->table(h) + row * row_bytes,
                  out + i * plan.out_row_bytes);
    } else {
      remote.push_back(i);
    }
  }
  if (remote.empty()) {
    done(absl::OkStatus());
    return;
  }
  RowRouter::Lookup lookup;
  lookup.layer_id = layer->id();
  lookup.layout = &layer->layout();
  lookup.keep_alive = layer;
  lookup.ids = ids.rows;
  lookup.heads = ids.heads;
  lookup.positions = std::move(remote);
  lookup.out_dtype = out_dtype;
  lookup.out = out;
  lookup.reader =
      std::make_shared<CoordinatorReader>(cluster_, metrics_, rma_, layer);
  lookup.skip_shard = layer->has_rows() ? -1 : cluster_->self();
  lookup.token_model = token_model;
  router_.Read(std::move(lookup), std::move(done));
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
