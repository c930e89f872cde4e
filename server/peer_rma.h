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
#include "cluster/remote_layers.h"
#include "server/cluster.h"
#include "store/layer.h"
#include "transport/ucx_engine.h"

namespace engram {

// Reads through the shared cache of attached peer layers (RemoteLayers),
// keyed by this shard's copy of the layer: an entry dies with that copy,
// when its endpoint breaks, or when a read finds a range released. Borrows
// the engine and cluster. Thread-safe.
class PeerRmaReader {
 public:
  // `auto_select`: use rma only where the transport reads natively (mapped
  // or RDMA); otherwise always.
  PeerRmaReader(transport::UcxEngine* engine, ClusterContext* cluster,
                bool auto_select);

  using Row = RemoteLayers::Row;

  // Reads `rows` of `layer` from `shard`; `done` runs once, on some thread,
  // after nothing writes to a dst any more. FAILED_PRECONDITION: use the
  // gather path for this shard (it exports nothing, a row is not exported,
  // the attachment is being set up, or auto mode found only emulated
  // reads). Other errors: the read failed (some dsts may be written); the
  // caller falls back to gather.
  // `token_model` (non-zero): only exports of a version with that model are
  // read (else FAILED_PRECONDITION: the gather path asks the owner).
  void Read(int shard, std::shared_ptr<const Layer> layer,
            std::vector<Row> rows, uint64_t token_model,
            std::chrono::steady_clock::time_point deadline,
            std::function<void(absl::Status)> done);

 private:
  void ReadWith(int shard, const Layer& layer,
                const std::shared_ptr<const RemoteLayers::Entry>& entry,
                const std::vector<Row>& rows, uint64_t token_model,
                std::chrono::steady_clock::time_point deadline,
                std::function<void(absl::Status)> done);

  RemoteLayers layers_;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_PEER_RMA_H_
