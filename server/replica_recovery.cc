#include "server/replica_recovery.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "engram/v1/engram.grpc.pb.h"
#include "proto/convert.h"
#include "server/log.h"
#include "store/layer_builder.h"

namespace engram {
namespace {

constexpr auto kListTimeout = std::chrono::milliseconds(1500);
constexpr auto kGatherTimeout = std::chrono::seconds(30);
constexpr auto kRetryAfter = std::chrono::seconds(2);
constexpr size_t kBatchBytes = 2 << 20;

std::chrono::system_clock::time_point After(
    std::chrono::system_clock::duration d) {
  return std::chrono::system_clock::now() + d;
}

}  // namespace

ReplicaRecovery::ReplicaRecovery(ClusterContext* cluster, LayerRegistry* layers,
                                 MemoryBudget* budget, bool pin_memory,
                                 const ExportMapper* exporter)
    : cluster_(cluster),
      layers_(layers),
      budget_(budget),
      pin_memory_(pin_memory),
      exporter_(exporter) {}

ReplicaRecovery::~ReplicaRecovery() {
  copier_.Stop();
  for (const auto& ticket : tickets_) layers_->Abandon(ticket);
}

int ReplicaRecovery::Plan(const std::set<int64_t>& skip) {
  std::map<int64_t, LayerLayout> committed;
  for (int s = 0; s < cluster_->size(); ++s) {
    if (s == cluster_->self()) continue;
    auto stub = v1::EngramStore::NewStub(cluster_->channel(s));
    grpc::ClientContext context;
    context.set_deadline(After(kListTimeout));
    v1::ListLayersResponse list;
    grpc::Status st =
        stub->ListLayers(&context, v1::ListLayersRequest(), &list);
    if (!st.ok()) continue;  // down, or starting with us
    for (const v1::LayerInfo& info : list.layers()) {
      absl::StatusOr<LayerLayout> layout = LayoutFromConfig(info.config());
      if (layout.ok()) committed.emplace(info.layer_id(), *std::move(layout));
    }
  }
  for (auto& [id, layout] : committed) {
    if (skip.count(id)) continue;
    auto ticket = layers_->BeginRecovery(Layer::Placeholder(id, layout));
    if (ticket.ok()) tickets_.push_back(*std::move(ticket));
  }
  pending_.store(static_cast<int>(tickets_.size()));
  if (!tickets_.empty()) {
    LogInfo(absl::StrCat("recovery: ", tickets_.size(),
                         " layers are committed on the other shards; this "
                         "shard copies its row ranges from replicas before "
                         "serving them"));
  }
  return static_cast<int>(tickets_.size());
}

int ReplicaRecovery::unrecoverable() const {
  int n = 0;
  for (const auto& t : tickets_) n += t->unrecoverable() && !t->aborted();
  return n;
}

void ReplicaRecovery::Start(std::function<void()> on_progress) {
  on_progress_ = std::move(on_progress);
  if (tickets_.empty()) return;
  todo_ = tickets_;
  copier_.Start(
      kRetryAfter, PeriodicThread::First::kAtOnce,
      [this](const std::stop_token& stop) { return RecoverPass(stop); });
}

bool ReplicaRecovery::RecoverPass(const std::stop_token& stop) {
  std::vector<std::shared_ptr<PopulateTicket>> retry;
  for (const auto& ticket : todo_) {
    if (stop.stop_requested()) return false;
    const int64_t id = ticket->layer_id();
    const auto start = std::chrono::steady_clock::now();
    const int64_t copied_before = bytes_copied();
    absl::Status s = Recover(ticket, stop);
    if (stop.stop_requested()) return false;
    if (s.ok()) {
      LogInfo(absl::StrCat("recovery: layer ", id,
                           " back: ", bytes_copied() - copied_before,
                           " bytes copied from replicas in ",
                           std::chrono::duration<double>(
                               std::chrono::steady_clock::now() - start)
                               .count(),
                           " s"));
    } else if (ticket->aborted()) {
      LogInfo(absl::StrCat("recovery: layer ", id,
                           " was removed meanwhile; not recovered"));
      layers_->Abandon(ticket);
    } else if (ticket->unrecoverable()) {
      LogError(absl::StrCat(
          "recovery: layer ", id, " cannot be recovered: ", s.message(),
          "; its rows here answer UNAVAILABLE until the layer is removed "
          "and populated again"));
    } else {
      LogWarning(absl::StrCat("recovery: layer ", id,
                              " not copied yet, will retry: ", s.message()));
      retry.push_back(ticket);
      continue;
    }
    pending_.fetch_sub(1, std::memory_order_acq_rel);
    if (on_progress_) on_progress_();
  }
  todo_ = std::move(retry);
  if (!todo_.empty()) return true;
  LogInfo(absl::StrCat("recovery: done; ", unrecoverable(),
                       " layers unrecoverable"));
  return false;
}

absl::Status ReplicaRecovery::Recover(
    const std::shared_ptr<PopulateTicket>& ticket,
    const std::stop_token& stop) {
  const Layer& placeholder = *ticket->placeholder();
  const int64_t id = placeholder.id();
  const LayerLayout& layout = placeholder.layout();
  const Placement& placement = cluster_->placement();
  const int self = cluster_->self();
  std::vector<std::vector<RowRange>> owned(layout.num_heads());
  for (int h = 0; h < layout.num_heads(); ++h) {
    owned[h] = placement.OwnedRanges(id, h, layout.table_vocab_sizes[h], self);
  }
  auto builder =
      LayerBuilder::Create(id, layout, budget_, pin_memory_, owned, exporter_);
  if (!builder.ok()) return builder.status();
  const size_t row_bytes = layout.row_bytes();
  const int64_t batch =
      std::max<int64_t>(1, static_cast<int64_t>(kBatchBytes / row_bytes));
  for (int h = 0; h < layout.num_heads(); ++h) {
    const int64_t rows = layout.table_vocab_sizes[h];
    for (RowRange range : owned[h]) {
      std::vector<int> sources;
      for (int s : placement.OwnersOfRow(id, h, rows, range.begin)) {
        if (s != self) sources.push_back(s);
      }
      if (sources.empty()) {
        ticket->MarkUnrecoverable();
        return absl::DataLossError(absl::StrCat(
            "head ", h, " rows [", range.begin, ", ", range.end,
            ") have no other replica (--replication=", placement.replication(),
            ")"));
      }
      for (int64_t begin = range.begin; begin < range.end; begin += batch) {
        if (ticket->aborted()) return absl::AbortedError("removed");
        if (stop.stop_requested()) return absl::CancelledError("stopping");
        const int64_t n = std::min(batch, range.end - begin);
        internal::v1::GatherRequest request;
        request.set_layer_id(id);
        for (int64_t r = begin; r < begin + n; ++r) {
          request.add_heads(h);
          request.add_row_ids(r);
        }
        std::string errors;
        bool copied = false;
        for (int s : sources) {
          grpc::ClientContext context;
          context.set_deadline(After(kGatherTimeout));
          internal::v1::GatherResponse response;
          grpc::Status st =
              cluster_->stub(s)->Gather(&context, request, &response);
          if (st.ok() && response.data().size() == n * row_bytes) {
            if (absl::Status add =
                    (*builder)->AddChunk(h, begin, response.data());
                !add.ok()) {
              return add;
            }
            bytes_copied_.fetch_add(static_cast<int64_t>(n * row_bytes),
                                    std::memory_order_relaxed);
            copied = true;
            break;
          }
          absl::StrAppend(&errors, errors.empty() ? "" : "; ", "shard ", s,
                          ": ", st.ok() ? "short reply" : st.error_message());
        }
        if (!copied) {
          return absl::UnavailableError(
              absl::StrCat("no replica of head ", h, " rows [", begin, ", ",
                           begin + n, ") answered (", errors, ")"));
        }
      }
    }
  }
  absl::StatusOr<std::shared_ptr<Layer>> layer = (*builder)->Finish();
  if (!layer.ok()) return layer.status();
  return layers_->Commit(ticket, *std::move(layer));
}

}  // namespace engram
