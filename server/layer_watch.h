// WatchLayer (internal peer API): what a same-host zero-copy reader maps
// (docs/gpu.md). Each stream watches one layer id and is sent the layer's
// current version whenever it changes: its exported host tables and, when
// asked, CUDA IPC handles of its GPU copy. Every version sent is leased to
// the stream — the stream holds the Layer, so neither its exported memory
// nor its GPU copy is freed, even after a replace or remove — until the
// reader releases that version or, a grace period after, the stream ends
// (the reader exited, or its connection broke).
#ifndef ENGRAM_SERVER_LAYER_WATCH_H_
#define ENGRAM_SERVER_LAYER_WATCH_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "server/token_hashes.h"
#include "store/layer.h"
#include "store/layer_registry.h"
#include "transport/ucx_engine.h"

namespace engram {

class Authorizer;

// How much of an export a caller is given.
enum class ExportAccess {
  // Segment ids and offsets only: a same-host reader attaches them
  // read-only; no UCX worker address, rkeys or addresses (nothing a UCX
  // put could use). Every caller but a peer.
  kAttachOnly,
  // Also the UCX worker address and rkeys: shards' one-sided reads.
  kUcx,
};

// Fills `response` with `layer`'s exported ranges as `transport` (the
// engine that exported them) describes them, to the extent `access` says.
void DescribeLayerExports(const Layer& layer,
                          const transport::UcxEngine& transport,
                          ExportAccess access,
                          internal::v1::TransportResponse* response);

// The watch streams of one server. Created once, shared with the
// registry's change listener (which may outlive the peer service, hence
// the shared_ptr); Close() ends every stream and turns notifications into
// no-ops. Borrows the registry and the transport (may be null: host tables
// are then not offered). Thread-safe.
class LayerWatchHub : public std::enable_shared_from_this<LayerWatchHub> {
 public:
  struct Options {
    int max_streams = 1024;
    // Versions one stream may hold unreleased; past it the stream ends
    // with RESOURCE_EXHAUSTED (a reader that never releases would keep
    // every replaced version's memory).
    int max_leases_per_stream = 16;
    // How long the versions of a stream that ended stay allocated: a
    // reader whose stream broke may still be finishing launches over them
    // (its own grace before unmapping is shorter).
    std::chrono::milliseconds ended_stream_grace{5000};
    // A version the reader still holds this long after it was replaced (or
    // removed) ends the stream (DEADLINE_EXCEEDED): a reader that never
    // releases cannot keep replaced versions' memory, and so block
    // replaces through the budget. Readers release within seconds.
    std::chrono::milliseconds superseded_lease{60000};
    // Streams one caller (its credential's name, or its address when
    // anonymous) may hold open: no caller takes every slot.
    int max_streams_per_caller = 64;
  };
  // Also installs itself as `layers`' change listener.
  // `hashes` (may be null) says what each version's ids mean to token
  // lookups; the hub also becomes its change listener.
  static std::shared_ptr<LayerWatchHub> Create(LayerRegistry* layers,
                                               transport::UcxEngine* transport,
                                               TokenHashes* hashes,
                                               Options options);
  ~LayerWatchHub();

  // `may_share_gpu`: the caller may get CUDA IPC handles of GPU copies
  // (which map writable), else it is told why not. `caller`: who, for the
  // per-caller cap.
  grpc::ServerBidiReactor<internal::v1::WatchLayerRequest,
                          internal::v1::LayerMapping>*
  Start(grpc::CallbackServerContext* context, bool may_share_gpu,
        std::string caller);
  // Ends every open stream (server shutdown) and refuses new ones.
  void Close();

  int open_streams() const;
  // Frees the versions of ended streams whose grace passed, and ends the
  // streams holding a version superseded for longer than
  // options.superseded_lease (a janitor calls it about once a second;
  // `all`: frees every held version).
  void ExpireHeld(bool all = false);
  // Versions leased to readers (each stream's current one included) or
  // held for ended streams' grace.
  int64_t leased_versions() const { return leases_.load(); }

 private:
  class Stream;
  LayerWatchHub(LayerRegistry* layers, transport::UcxEngine* transport,
                const TokenHashes* hashes, Options options)
      : layers_(layers),
        transport_(transport),
        hashes_(hashes),
        options_(options) {}
  uint64_t TokenModelOf(const Layer& layer) const {
    return hashes_ == nullptr ? 0 : hashes_->TokenModelOf(layer);
  }
  void Changed(int64_t layer_id);
  // RESOURCE_EXHAUSTED saying which cap is reached.
  absl::Status Register(Stream* stream, int64_t layer_id,
                        const std::string& caller);
  void Unregister(Stream* stream, int64_t layer_id, const std::string& caller);
  // Keeps an ended stream's versions for options_.ended_stream_grace.
  void HoldAfterEnd(std::vector<std::shared_ptr<const Layer>> versions);

  LayerRegistry* const layers_;
  transport::UcxEngine* const transport_;
  const TokenHashes* const hashes_;
  const Options options_;
  std::atomic<int64_t> leases_{0};
  mutable Mutex mu_;
  std::multimap<int64_t, Stream*> streams_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> streams_by_caller_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  struct Held {
    std::chrono::steady_clock::time_point until;
    std::vector<std::shared_ptr<const Layer>> versions;
  };
  std::deque<Held> held_ ABSL_GUARDED_BY(mu_);  // oldest first
};

}  // namespace engram

#endif  // ENGRAM_SERVER_LAYER_WATCH_H_
