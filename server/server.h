// engramd's process-level pieces: the gRPC server with health and
// reflection, the /metrics endpoint, and the demo layer.
#ifndef ENGRAM_SERVER_SERVER_H_
#define ENGRAM_SERVER_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>

#include <atomic>
#include <memory>
#include <set>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "proto/channel_security.h"
#include "server/auth.h"
#include "server/cluster.h"
#include "server/cluster_coordinator.h"
#include "server/config.h"
#include "server/demo_layer.h"
#include "server/health_reporter.h"
#include "server/metrics.h"
#include "server/peer_rma.h"
#include "server/peer_service.h"
#include "server/pending_responses.h"
#include "server/replica_recovery.h"
#include "server/table_loader.h"
#include "server/tls_files.h"
#include "server/token_hashes.h"
#include "store/gpu_tier.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"
#include "transport/ucx_engine.h"

namespace engram {

class EngramService;  // server/engram_service.h; only server.cc builds it

// The layer the --demo flag serves: id 0, heads with 1000, 1003, 1009 and
// 1013 rows, D = 8, float32. Row r of head h holds
// h * 100000 + r + d / 8 at element d, so a lookup is easy to check by eye.

// Health service names: "" (the default, what grpcurl and readiness probes
// ask) is SERVING only while every row range has a reachable owner;
// kLivenessService is SERVING while the process serves at all, so liveness
// probes do not restart healthy shards when a peer dies.
inline constexpr char kLivenessService[] = "engram.liveness";
// SERVING once a restarted shard holds every row range it owns again (at
// once on a fresh start); readiness ("") waits for it too.
inline constexpr char kRecoveryService[] = "engram.recovery";

// Owns everything engramd serves with. Start builds every part once,
// bottom-up (no part is changed after it is built), and listens; Shutdown
// (or the destructor) runs the one stop order. Start once, then Shutdown
// once, both from one thread; the accessors are safe from any thread after
// Start.
class EngramServer {
 public:
  explicit EngramServer(ServerConfig config);
  ~EngramServer();

  // Binds both listeners and starts serving. The config's port 0 picks
  // free ports; see grpc_port() / metrics_port().
  absl::Status Start();
  // Health NOT_SERVING, then lets in-flight calls finish for up to
  // drain_seconds before cancelling the rest.
  void Shutdown();
  // Blocks until Shutdown completes.
  void Wait();

  // Re-reads the credential files now (SIGHUP); certificates are re-read
  // on their own every --credentials_reload_seconds.
  void ReloadCredentials();

  // For gauges main() adds (call before Start).
  ServerMetrics* metrics() { return &metrics_; }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  // --health_listen's port; 0 without one.
  int health_port() const { return health_port_; }

 private:
  // The UCX engine for --peer_read=auto|rma (left null for gather, or for
  // auto where UCX cannot start).
  absl::Status StartTransport();
  // Creates the table loader and, with --load, checks the manifest.
  absl::Status StartLoader();
  // The authorizer, the gRPC port's credentials and the peer channels'.
  absl::Status StartSecurity(const std::vector<std::string>& peers);
  // Cluster mode: the peer reader, the coordinator and replica recovery.
  void StartClusterParts();
  // Gauges read from the parts Start built.
  void AddServiceGauges();
  // /metrics (--metrics_listen; none when empty).
  absl::Status StartMetricsEndpoint();
  // The gRPC server with every service, on --listen.
  absl::Status Listen();
  // The plaintext health-only listener (--health_listen; none when empty).
  absl::Status ListenForProbes();
  // Health, the start load, the credential watcher, recovery and the
  // prober: what runs on its own threads once the server listens.
  void StartBackgroundWork();
  // Where populated tables are exported for direct readers (null without a
  // transport).
  const ExportMapper* exporter() const {
    return ucx_ != nullptr ? &exporter_ : nullptr;
  }
  // Why the default health service says NOT_SERVING ("" when ready).
  std::string NotReadyReason() const;
  // The Status RPC's server-wide part (readiness, loads, recovery,
  // cluster, process).
  void FillServerStatus(v1::StatusResponse* status) const;
  // Shutdown's stop order; the destructor's too (no drain).
  void Stop(double drain_seconds);

  const ServerConfig config_;
  MemoryBudget budget_;
  // Before layers_: layers hold GPU mirrors charged to the tier's budget.
  // Before server_ too: lookup responses in flight hold the tier's pinned
  // buffers (GpuTier::FreeResponse), so the gRPC server must go first.
  std::unique_ptr<GpuTier> gpu_;
  // Before layers_ too: shard layers' exported ranges are unmapped by it.
  std::unique_ptr<transport::UcxEngine> ucx_;
  ExportMapper exporter_;  // ucx_'s, when there is one
  LayerRegistry layers_;
  ThreadPool pool_;
  ServerMetrics metrics_;
  // Before the services: their stream reactors unregister from it, and
  // their response slices release charges into it.
  StreamWatchdog watchdog_;
  PendingResponses pending_;
  std::unique_ptr<EngramService> service_;
  // Cluster mode (--peers) only.
  std::unique_ptr<ClusterContext> cluster_;
  // Single node: itself as a one-shard cluster, for the peer service.
  std::unique_ptr<ClusterContext> local_cluster_;
  std::unique_ptr<PeerService> peer_service_;
  std::unique_ptr<PeerRmaReader> rma_;
  std::unique_ptr<ClusterCoordinator> coordinator_;
  // Cluster mode: copies this shard's rows back after a restart.
  std::unique_ptr<ReplicaRecovery> recovery_;
  // What the health service says; outlives the threads that update it
  // (loader, recovery, prober), which are all destroyed before it.
  HealthReporter health_;
  // Loads manifests (--load, Load requests); after the services that call it.
  TokenHashes token_hashes_;  // before loader_, which fills it
  std::unique_ptr<TableLoader> loader_;
  // --load: 1 while loading, 2 if it failed (not ready), 0 otherwise.
  std::atomic<int> start_load_{0};
  std::atomic<bool> stopping_{false};  // Stop began
  std::set<int64_t> start_load_ids_;   // the --load manifest's layers
  std::unique_ptr<Authorizer> auth_;
  // With TLS: the last good certificate and key, as gRPC reads them.
  std::unique_ptr<TlsKeyPair> tls_pair_;
  std::shared_ptr<grpc::ServerCredentials> server_credentials_;
  // How this shard's channels to the others authenticate; the token
  // follows --cluster_token_file as it is rotated.
  ChannelSecurity peer_security_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  int grpc_port_ = 0;
  int health_port_ = 0;
  int metrics_port_ = 0;
};

}  // namespace engram

#endif  // ENGRAM_SERVER_SERVER_H_
