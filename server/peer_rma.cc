#include "server/peer_rma.h"

#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "server/log.h"

namespace engram {
namespace {
// How long a shard sticks to the gather path for a peer's layer before it
// asks the peer's Transport again (the peer may have restarted with UCX).
constexpr auto kRetryGather = std::chrono::seconds(30);
}  // namespace

PeerRmaReader::PeerRmaReader(transport::UcxEngine* engine,
                             ClusterContext* cluster, bool auto_select)
    : engine_(engine), cluster_(cluster), auto_select_(auto_select) {}

std::shared_ptr<PeerRmaReader::Entry> PeerRmaReader::Cached(
    const Key& key, const Layer* layer) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    // A miss (a new layer, typically): drop entries of layers this shard
    // dropped, so their mappings do not outlive them for long. Not on hits:
    // they are the lookup path.
    std::erase_if(cache_,
                  [](const auto& kv) { return kv.second->layer.expired(); });
    return nullptr;
  }
  const Entry& e = *it->second;
  if (e.layer.lock().get() != layer ||
      (e.remote != nullptr && e.remote->broken()) ||
      (e.remote == nullptr && std::chrono::steady_clock::now() > e.retry_at)) {
    cache_.erase(it);
    return nullptr;
  }
  return it->second;
}

void PeerRmaReader::Forget(const Key& key, const Entry* entry) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(key);
  if (it != cache_.end() && it->second.get() == entry) cache_.erase(it);
}

void PeerRmaReader::Read(int shard, std::shared_ptr<const Layer> layer,
                         std::vector<Row> rows,
                         std::chrono::steady_clock::time_point deadline,
                         std::function<void(absl::Status)> done) {
  const Key key{shard, layer->id()};
  if (std::shared_ptr<Entry> entry = Cached(key, layer.get())) {
    ReadWith(std::move(entry), key, *layer, std::move(rows), deadline,
             std::move(done));
    return;
  }
  struct Call {
    grpc::ClientContext context;
    internal::v1::TransportRequest request;
    internal::v1::TransportResponse response;
    std::vector<Row> rows;
    std::function<void(absl::Status)> done;
    std::shared_ptr<const Layer> layer;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          deadline - std::chrono::steady_clock::now()));
  call->request.set_layer_id(layer->id());
  call->rows = std::move(rows);
  call->done = std::move(done);
  call->layer = std::move(layer);
  cluster_->stub(shard)->async()->Transport(
      &call->context, &call->request, &call->response,
      [this, call, key, shard, deadline](grpc::Status status) {
        const Layer& layer = *call->layer;
        auto entry = std::make_shared<Entry>();
        entry->layer = call->layer;
        entry->retry_at = std::chrono::steady_clock::now() + kRetryGather;
        if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
            status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
          // The peer exports nothing (or predates Transport): remember,
          // use gather.
        } else if (!status.ok()) {
          call->done(absl::UnavailableError(absl::StrCat(
              "shard ", shard, " Transport: ", status.error_message())));
          return;
        } else if (call->response.heads_size() != layer.layout().num_heads()) {
          call->done(absl::FailedPreconditionError(absl::StrCat(
              "shard ", shard, " exports ", call->response.heads_size(),
              " heads of layer ", layer.id(), "; this shard's copy has ",
              layer.layout().num_heads())));
          return;
        } else {
          std::vector<std::string> descriptors;
          entry->exports.emplace(call->response, &descriptors);
          absl::StatusOr<std::shared_ptr<transport::RemoteRegions>> remote =
              engine_->Attach(call->response.worker_address(),
                              call->response.control_descriptor(), descriptors);
          if (!remote.ok()) {
            // E.g. a peer in another IPC namespace: its shared memory cannot
            // be attached. Gather for a while rather than retry every call.
            LogWarning(absl::StrCat("cannot attach shard ", shard,
                                    "'s exports of layer ", layer.id(), " (",
                                    remote.status().ToString(),
                                    "); reading them with gather"));
          } else if (!auto_select_ || (*remote)->fast()) {
            entry->remote = *std::move(remote);
          }
          if (remote.ok()) {
            LogInfo(absl::StrCat(
                "peer reads of layer ", layer.id(), " from shard ", shard, ": ",
                entry->remote != nullptr
                    ? absl::StrCat("rma over ", entry->remote->transport())
                    : absl::StrCat("gather (UCX reads would go over ",
                                   (*remote)->transport(), ", emulated)")));
          }
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          cache_[key] = entry;
        }
        ReadWith(std::move(entry), key, layer, std::move(call->rows), deadline,
                 std::move(call->done));
      });
}

void PeerRmaReader::ReadWith(std::shared_ptr<Entry> entry, const Key& key,
                             const Layer& layer, std::vector<Row> rows,
                             std::chrono::steady_clock::time_point deadline,
                             std::function<void(absl::Status)> done) {
  if (entry->remote == nullptr) {
    done(absl::FailedPreconditionError("gather path chosen for this shard"));
    return;
  }
  const uint64_t row_bytes = layer.layout().row_bytes();
  std::vector<transport::ReadOp> ops;
  ops.reserve(rows.size());
  for (const Row& row : rows) {
    std::optional<transport::ReadOp> op =
        entry->exports->Op(row.head, row.row, row_bytes, row.dst);
    if (!op) {
      done(absl::FailedPreconditionError(
          absl::StrCat("row ", row.row, " of head ", row.head,
                       " is not exported by shard ", key.first)));
      return;
    }
    ops.push_back(*op);
  }
  engine_->Read(entry->remote, std::move(ops), deadline,
                [this, entry, key, done = std::move(done)](absl::Status s) {
                  if (!s.ok()) Forget(key, entry.get());
                  done(std::move(s));
                });
}

}  // namespace engram
