// A shard that restarts without its data rejoins by copying its row ranges
// of every layer the rest of the cluster has committed, from live replicas,
// before it serves them.
#ifndef ENGRAM_SERVER_REPLICA_RECOVERY_H_
#define ENGRAM_SERVER_REPLICA_RECOVERY_H_

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <stop_token>
#include <vector>

#include "common/periodic_thread.h"
#include "server/cluster.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"

namespace engram {

// Plan() runs before the server listens: it asks every reachable peer for
// its committed layers and claims each one in the registry with a recovery
// ticket (layout, no rows), so from the first call on this shard neither
// answers for rows it lacks nor takes a populate of those ids. Start() then
// copies on one thread, layer by layer, range by range, each batch from the
// first live replica that has it, and commits. A layer no replica can
// provide (R = 1, or every replica down) stays claimed as unrecoverable:
// reads of it answer UNAVAILABLE, never NOT_FOUND for some rows, until a
// cluster-wide Remove. Borrows every pointer. Thread-safe.
class ReplicaRecovery {
 public:
  ReplicaRecovery(ClusterContext* cluster, LayerRegistry* layers,
                  MemoryBudget* budget, bool pin_memory,
                  const ExportMapper* exporter);
  ~ReplicaRecovery();  // stops copying (the claims are dropped) and joins

  // Claims the layers to recover, except those in `skip` (this shard loads
  // them from checkpoint files: engramd --load); returns how many.
  int Plan(const std::set<int64_t>& skip = {});
  // Copies on a background thread; `on_progress` runs after each layer.
  void Start(std::function<void()> on_progress);

  int pending() const { return pending_.load(std::memory_order_acquire); }
  // Layers still claimed that no replica could provide (a Remove clears
  // them).
  int unrecoverable() const;
  int64_t bytes_copied() const {
    return bytes_copied_.load(std::memory_order_relaxed);
  }

 private:
  // One pass over the layers still to copy; false once none is left (every
  // other pass retries those that failed for now).
  bool RecoverPass(const std::stop_token& stop);
  // Copies one claimed layer; OK, or why it could not.
  absl::Status Recover(const std::shared_ptr<PopulateTicket>& ticket,
                       const std::stop_token& stop);

  ClusterContext* const cluster_;
  LayerRegistry* const layers_;
  MemoryBudget* const budget_;
  const bool pin_memory_;
  const ExportMapper* const exporter_;
  std::vector<std::shared_ptr<PopulateTicket>> tickets_;  // set by Plan
  std::atomic<int> pending_{0};
  std::atomic<int64_t> bytes_copied_{0};
  std::function<void()> on_progress_;
  // Only the copying thread touches it.
  std::vector<std::shared_ptr<PopulateTicket>> todo_;
  PeriodicThread copier_;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_REPLICA_RECOVERY_H_
