// Direct reads for a cluster client on the shards' host: rows copied
// straight out of the shards' exported table memory (UCX maps it into this
// process), no RPC at all. The UCX implementation of DirectReads, in
// engram::client_direct; linking that target registers it.
#ifndef ENGRAM_CLIENT_DIRECT_READER_H_
#define ENGRAM_CLIENT_DIRECT_READER_H_

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "client/direct_reads.h"
#include "cluster/remote_layers.h"
#include "common/layout.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "transport/ucx_engine.h"

namespace engram {

// Owns a UCX engine and reads through the shared cache of attached shard
// layers (RemoteLayers), accepting only mapped memory (anything else would
// be per-row network reads, slower than the shard's own gather). An entry
// is fetched in the background the first time a lookup needs it (that
// lookup and any until it is ready use RPCs), and is dropped when a read
// finds the layer's memory released or the layer is forgotten. Borrows the
// stubs. Thread-safe; the destructor waits for fetches in flight.
class DirectReader final : public DirectReads {
 public:
  // Null when UCX is not compiled in or cannot start.
  static std::unique_ptr<DirectReads> Create(
      std::vector<internal::v1::EngramPeer::Stub*> stubs);

  bool TryRead(int shard, int64_t layer_id, const LayerLayout& layout,
               std::span<const Row> rows, uint64_t token_model) override;
  void Forget(int64_t layer_id) override;

 private:
  DirectReader(std::unique_ptr<transport::UcxEngine> engine,
               std::vector<internal::v1::EngramPeer::Stub*> stubs);

  std::unique_ptr<transport::UcxEngine> engine_;  // outlives layers_
  RemoteLayers layers_;
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DIRECT_READER_H_
