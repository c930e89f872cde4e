// The cluster side of the public API on the shard that received a call:
// two-phase populate across the owners of every row range, lookups that
// gather remote rows from their owners with replica failover, and
// cluster-wide Remove.
#ifndef ENGRAM_SERVER_CLUSTER_COORDINATOR_H_
#define ENGRAM_SERVER_CLUSTER_COORDINATOR_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "cluster/row_router.h"
#include "common/thread_pool.h"
#include "engram/v1/engram.grpc.pb.h"
#include "server/cluster.h"
#include "server/metrics.h"
#include "server/peer_rma.h"
#include "server/read_stream.h"
#include "store/layer.h"
#include "store/layer_registry.h"

namespace engram {

// Borrows every pointer. Thread-safe; nothing here blocks a gRPC reactor:
// populate fan-out runs on a few populate workers shared by all streams (a
// stream occupies one only while the owners take a message), lookups and
// removes use the async peer API.
class ClusterCoordinator {
 public:
  // `rma` (may be null: gather only) reads remote rows one-sidedly.
  // `watchdog` (may be null) ends populate streams that go idle.
  ClusterCoordinator(ClusterContext* cluster, LayerRegistry* layers,
                     ServerMetrics* metrics, PeerRmaReader* rma = nullptr,
                     StreamWatchdog* watchdog = nullptr);

  grpc::ServerReadReactor<v1::PopulateRequest>* NewPopulate(
      grpc::CallbackServerContext* context, v1::PopulateResponse* response);

  // Fills `out` with rows ids[0..n) of `layer` (this shard's copy: its own
  // ranges are read locally, the rest from their owners), converted to
  // `out_dtype`; `done` runs once, on some thread. UNAVAILABLE naming the
  // shards when no owner of some row answers.
  // `token_model` (non-zero): the ids were hashed with it; other shards
  // serve only while their layer has it (ShardRead::token_model).
  void Gather(std::shared_ptr<const Layer> layer, RowIds ids, int64_t n,
              DType out_dtype, uint8_t* out,
              std::function<void(absl::Status)> done, uint64_t token_model = 0);

  void Remove(int64_t layer_id, bool force,
              std::function<void(absl::StatusOr<int>)> done);

  ClusterContext* cluster() { return cluster_; }
  LayerRegistry* layers() { return layers_; }
  ServerMetrics* metrics() { return metrics_; }
  StreamWatchdog* watchdog() { return watchdog_; }
  ThreadPool* populate_workers() { return &populate_workers_; }

 private:
  ClusterContext* const cluster_;
  LayerRegistry* const layers_;
  ServerMetrics* const metrics_;
  PeerRmaReader* const rma_;
  StreamWatchdog* const watchdog_;
  // Shard liveness for the router: the cluster's prober and failures.
  struct States final : ShardStates {
    explicit States(ClusterContext* c) : cluster(c) {}
    bool up(int shard) const override { return cluster->up(shard); }
    void MarkDown(int shard) override { cluster->MarkDown(shard); }
    std::string Name(int shard) const override;
    ClusterContext* const cluster;
  };
  States states_;
  RowRouter router_;
  // Blocking peer writes of every populate stream; more streams than
  // workers just wait their turn.
  static constexpr int kPopulateWorkers = 4;
  ThreadPool populate_workers_;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_CLUSTER_COORDINATOR_H_
