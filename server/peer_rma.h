// The rma peer-read path: rows another shard owns, read with UCX one-sided
// reads straight into the caller's buffer.
#ifndef ENGRAM_SERVER_PEER_RMA_H_
#define ENGRAM_SERVER_PEER_RMA_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "cluster/exported_layer.h"
#include "server/cluster.h"
#include "store/layer.h"
#include "transport/ucx_engine.h"

namespace engram {

// Caches, per (shard, layer), what the shard's Transport call returned,
// attached through the engine; an entry dies with this shard's copy of the
// layer (weak pointer), when its endpoint breaks, or when a read finds a
// range released. Borrows the engine and cluster. Thread-safe.
class PeerRmaReader {
 public:
  // `auto_select`: use rma only where the transport reads natively (mapped
  // or RDMA); otherwise always.
  PeerRmaReader(transport::UcxEngine* engine, ClusterContext* cluster,
                bool auto_select);

  struct Row {
    int head;
    int64_t row;
    uint8_t* dst;  // row_bytes of the layer's stored dtype
  };

  // Reads `rows` of `layer` from `shard`; `done` runs once, on some thread,
  // after nothing writes to a dst any more. FAILED_PRECONDITION: use the
  // gather path for this shard (it exports nothing, a row is not exported,
  // or auto mode found only emulated reads). Other errors: the read failed
  // (some dsts may be written); the caller falls back to gather.
  void Read(int shard, std::shared_ptr<const Layer> layer,
            std::vector<Row> rows,
            std::chrono::steady_clock::time_point deadline,
            std::function<void(absl::Status)> done);

 private:
  struct Entry {
    std::weak_ptr<const Layer> layer;
    std::shared_ptr<transport::RemoteRegions> remote;  // null: use gather
    std::chrono::steady_clock::time_point retry_at;    // when null: ask again
    std::optional<ExportedLayer> exports;              // set with `remote`
  };
  using Key = std::pair<int, int64_t>;

  std::shared_ptr<Entry> Cached(const Key& key, const Layer* layer);
  void ReadWith(std::shared_ptr<Entry> entry, const Key& key,
                const Layer& layer, std::vector<Row> rows,
                std::chrono::steady_clock::time_point deadline,
                std::function<void(absl::Status)> done);
  void Forget(const Key& key, const Entry* entry);

  transport::UcxEngine* const engine_;
  ClusterContext* const cluster_;
  const bool auto_select_;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<Entry>> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_SERVER_PEER_RMA_H_
