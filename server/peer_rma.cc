#include "server/peer_rma.h"

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace engram {
namespace {

// How long a shard sticks to the gather path for a peer's layer before it
// asks the peer's Transport again (the peer may have restarted with UCX).
constexpr auto kRetryGather = std::chrono::seconds(30);

std::vector<internal::v1::EngramPeer::Stub*> PeerStubs(
    ClusterContext* cluster) {
  std::vector<internal::v1::EngramPeer::Stub*> stubs;
  for (int s = 0; s < cluster->size(); ++s) stubs.push_back(cluster->stub(s));
  return stubs;
}

}  // namespace

PeerRmaReader::PeerRmaReader(transport::UcxEngine* engine,
                             ClusterContext* cluster, bool auto_select)
    : layers_(
          engine, PeerStubs(cluster),
          RemoteLayers::Options{
              .accept =
                  [auto_select](const transport::RemoteRegions& remote) {
                    return !auto_select || remote.fast();
                  },
              .retry_after = kRetryGather,
              .fetch_timeout = std::chrono::seconds(3),
              .on_attach =
                  [](int shard, int64_t layer, const std::string& what) {
                    LogInfo(absl::StrCat("peer reads of layer ", layer,
                                         " from shard ", shard, ": ", what));
                  }}) {}

void PeerRmaReader::Read(int shard, std::shared_ptr<const Layer> layer,
                         std::vector<Row> rows, uint64_t token_model,
                         std::chrono::steady_clock::time_point deadline,
                         std::function<void(absl::Status)> done) {
  if (auto entry = layers_.Find(shard, layer->id(), layer)) {
    ReadWith(shard, *layer, entry, rows, token_model, deadline,
             std::move(done));
    return;
  }
  const int heads = layer->layout().num_heads();
  const int64_t id = layer->id();
  // The entry is versioned by this shard's copy of the layer (copied here:
  // the callback below takes `layer` over).
  std::shared_ptr<const void> version = layer;
  layers_.Fetch(
      shard, id, heads, std::move(version),
      [this, shard, layer = std::move(layer), rows = std::move(rows),
       token_model, deadline, done = std::move(done)](
          absl::StatusOr<std::shared_ptr<const RemoteLayers::Entry>>
              entry) mutable {
        if (!entry.ok()) {
          // FAILED_PRECONDITION (being set up by another lookup, or another
          // layout): gather without counting a fallback; else a failure.
          done(entry.status().code() == absl::StatusCode::kFailedPrecondition
                   ? entry.status()
                   : absl::UnavailableError(entry.status().message()));
          return;
        }
        ReadWith(shard, *layer, *entry, rows, token_model, deadline,
                 std::move(done));
      });
}

void PeerRmaReader::ReadWith(
    int shard, const Layer& layer,
    const std::shared_ptr<const RemoteLayers::Entry>& entry,
    const std::vector<Row>& rows, uint64_t token_model,
    std::chrono::steady_clock::time_point deadline,
    std::function<void(absl::Status)> done) {
  if (entry->remote == nullptr) {
    done(absl::FailedPreconditionError("gather path chosen for this shard"));
    return;
  }
  const uint64_t exported = entry->exports->token_model();
  if (token_model != 0 && exported != 0 && exported != token_model) {
    done(absl::FailedPreconditionError(
        "exported with another token model: the owner decides"));
    return;
  }
  layers_.Read(shard, layer.id(), entry, layer.layout().row_bytes(), rows,
               deadline, std::move(done));
}

}  // namespace engram
