// Client-side routing for a sharded cluster: the client evaluates the same
// placement as the servers, asks each owner for its rows directly (the
// internal peer Gather call) and assembles [B, L, H, D] in the caller's
// buffer, failing over across replicas. Internal to the client library.
#ifndef ENGRAM_CLIENT_CLUSTER_ROUTER_H_
#define ENGRAM_CLIENT_CLUSTER_ROUTER_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/direct_reads.h"
#include "cluster/placement.h"
#include "cluster/row_router.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "engram/internal/v1/peer.grpc.pb.h"

namespace engram {

// Thread-safe. Caches layer layouts (dropped when a shard says NOT_FOUND);
// a shard that failed is skipped for 2 s when it has replicas.
class ClusterRouter {
 public:
  // `describe` fetches a layer's layout (from any shard). `direct_reads`:
  // read rows of same-host shards straight from their memory (UCX).
  ClusterRouter(std::vector<std::shared_ptr<grpc::Channel>> shards,
                Placement placement, absl::Duration timeout,
                std::function<absl::StatusOr<LayerLayout>(int64_t)> describe,
                bool direct_reads = false);
  // Waits for peer calls still completing (a lookup's `done` may run
  // before its last callback has returned).
  ~ClusterRouter();

  // Populates through the owners directly (two phases, see PopulateFanout).
  // `rows(head, row, n, dst)` writes rows [row, row + n) of `head` to dst.
  absl::Status Populate(
      int64_t layer_id, const LayerLayout& layout,
      const std::function<absl::Status(int, int64_t, int64_t, uint8_t*)>& rows,
      size_t chunk_bytes, absl::Duration timeout,
      const std::function<void(uint64_t, uint64_t)>& progress,
      bool replace = false);

  // Validates like the server, then gathers. `done` runs once.
  // `token_model` (non-zero): the ids were hashed with it, and only owners
  // whose layer still has that model answer (else FAILED_PRECONDITION
  // inside the NOT_FOUND the router reports).
  void Lookup(int64_t layer_id, std::span<const int64_t> ids,
              std::span<const int64_t> shape, std::span<uint8_t> output,
              const LookupOptions& options,
              std::function<void(absl::Status)> done, uint64_t token_model = 0);
  // The stubs, for calls the router does not make itself (TokenModel).
  internal::v1::EngramPeer::Stub* stub(int shard) const {
    return stubs_[shard].get();
  }
  int num_shards() const { return static_cast<int>(stubs_.size()); }
  bool shard_up(int shard) const { return up(shard); }

 private:
  absl::StatusOr<LayerLayout> Layout(int64_t layer_id);
  void Forget(int64_t layer_id);
  bool up(int shard) const;
  void MarkDown(int shard);

  std::vector<std::unique_ptr<internal::v1::EngramPeer::Stub>> stubs_;
  std::vector<std::unique_ptr<grpc::GenericStub>> generic_stubs_;
  std::unique_ptr<DirectReads> direct_;  // after the stubs it borrows
  const Placement placement_;
  const absl::Duration timeout_;
  std::function<absl::StatusOr<LayerLayout>(int64_t)> describe_;
  std::unique_ptr<std::atomic<int64_t>[]> down_until_ms_;
  Mutex calls_mu_;
  std::condition_variable_any calls_done_;
  int in_flight_ ABSL_GUARDED_BY(calls_mu_) = 0;  // peer calls not yet back
  Mutex mu_;
  std::map<int64_t, LayerLayout> layouts_ ABSL_GUARDED_BY(mu_);
  // Liveness as this client sees it (a failed shard is skipped for 2 s).
  struct States final : ShardStates {
    explicit States(ClusterRouter* r) : router(r) {}
    bool up(int shard) const override { return router->up(shard); }
    void MarkDown(int shard) override { router->MarkDown(shard); }
    std::string Name(int shard) const override;
    ClusterRouter* const router;
  };
  class Reader;
  States states_;
  RowRouter rows_;  // the one cluster read path (cluster/row_router.h)
  std::shared_ptr<Reader> reader_;
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_CLUSTER_ROUTER_H_
