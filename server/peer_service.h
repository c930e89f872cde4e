// engram.internal.v1.EngramPeer: what a shard does for the other shards of
// its cluster (staging and committing its rows of a populate, gathering its
// rows for another shard's lookup, local removal).
#ifndef ENGRAM_SERVER_PEER_SERVICE_H_
#define ENGRAM_SERVER_PEER_SERVICE_H_

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "common/mutex.h"
#include "common/periodic_thread.h"
#include "common/thread_pool.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "server/auth.h"
#include "server/cluster.h"
#include "server/layer_watch.h"
#include "server/metrics.h"
#include "server/pending_responses.h"
#include "server/raw_unary.h"
#include "server/read_stream.h"
#include "server/token_hashes.h"
#include "store/layer_registry.h"
#include "transport/ucx_engine.h"

namespace engram {
class TableLoader;
}

namespace engram {

// Prepared transactions wait for Commit or Abort; a janitor thread drops
// those whose coordinator went silent for longer than the staged timeout.
// Borrows every pointer. Thread-safe.
// Gather is registered raw: rows are copied once, into a buffer the response
// slice owns, behind a hand-encoded GatherResponse header.
// Every unary method is raw (ServeRaw) so unparsable requests get
// INVALID_ARGUMENT.
class PeerService final
    : public internal::v1::EngramPeer::WithRawCallbackMethod_Gather<
          internal::v1::EngramPeer::WithRawCallbackMethod_Commit<
              internal::v1::EngramPeer::WithRawCallbackMethod_Abort<
                  internal::v1::EngramPeer::WithRawCallbackMethod_Transport<
                      internal::v1::EngramPeer::
                          WithRawCallbackMethod_RemoveLocal<
                              internal::v1::EngramPeer::
                                  WithRawCallbackMethod_StageFiles<
                                      internal::v1::EngramPeer::
                                          WithRawCallbackMethod_TokenModel<
                                              internal::v1::EngramPeer::
                                                  CallbackService>>>>>>> {
 public:
  // What one Gather may ask for, and the charge for unsent responses.
  struct GatherLimits {
    int64_t max_rows = int64_t{1} << 22;
    int64_t max_message_bytes = int64_t{256} << 20;
    PendingResponses* pending = nullptr;  // borrowed; may be null
    ThreadPool* pool = nullptr;           // big gathers copy there; may be null
  };
  // What the service works with, all borrowed (they must outlive it) and
  // fixed before it serves. Optional parts may be null.
  struct Parts {
    LayerRegistry* layers = nullptr;
    MemoryBudget* budget = nullptr;
    ClusterContext* cluster = nullptr;
    bool pin_memory = false;
    // Optional: places staged rows where other shards can read them and
    // answers Transport (null: nothing exported).
    transport::UcxEngine* transport = nullptr;
    LayerWatchHub::Options watch;
    // Gather and Transport need the read right, every other method the
    // peer right; without an authorizer every call is allowed.
    const Authorizer* auth = nullptr;
    // Ends idle Stage streams.
    StreamWatchdog* watchdog = nullptr;
    // Reads this shard's rows for StageFiles.
    TableLoader* loader = nullptr;
    // Model hashes of served layers: TokenModel answers from them, Gather
    // and Transport check and name a reader's token model against them.
    TokenHashes* hashes = nullptr;
    // --data_dir: staged shard tables are files there.
    std::string data_dir;
    GatherLimits limits;
  };
  explicit PeerService(Parts parts);
  ~PeerService() override;

  grpc::ServerReadReactor<internal::v1::StageRequest>* Stage(
      grpc::CallbackServerContext* context,
      internal::v1::StageResponse* response) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Gather(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Transport(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* TokenModel(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RemoveLocal(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<internal::v1::WatchLayerRequest,
                          internal::v1::LayerMapping>*
  WatchLayer(grpc::CallbackServerContext* context) override;
  // Zero-copy readers' streams (created by the constructor).
  LayerWatchHub* watch_hub() const { return watch_hub_.get(); }
  grpc::ServerUnaryReactor* StageFiles(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  const std::string& data_dir() const { return data_dir_; }

  // Reserves a transaction id for a Stage stream (`stream`) or a StageFiles
  // load: ALREADY_EXISTS while another stream or a prepared transaction
  // uses it, ABORTED once the coordinator aborted it (a late header of a
  // cancelled stream). Until a stream names its layer claim
  // (SetStagingTicket) or lets go (ReleaseTxn), an Abort of its id waits.
  absl::Status ClaimTxn(const std::string& txn_id, bool stream);
  // Names the layer claim a claimed transaction's stream holds, so Abort
  // can end that stream and free the layer id at once. ABORTED (keep
  // nothing, then ReleaseTxn) when Abort came first.
  absl::Status SetStagingTicket(const std::string& txn_id,
                                std::shared_ptr<PopulateTicket> ticket);
  // Drops the claim on `txn_id`; call after freeing its layer claim: Aborts
  // that waited for it are answered here.
  void ReleaseTxn(const std::string& txn_id);
  // Called by a Stage stream that ended with every held row; takes over
  // the stream's claim on `txn_id`. ABORTED when Abort came first: the
  // rows are dropped and the claim released.
  // `on_commit` (may be empty) runs after the layer is committed.
  absl::Status AddPrepared(
      const std::string& txn_id, std::shared_ptr<PopulateTicket> ticket,
      std::shared_ptr<Layer> layer,
      std::function<void(const std::shared_ptr<const Layer>&)> on_commit =
          nullptr);

  LayerRegistry* layers() { return layers_; }
  MemoryBudget* budget() { return budget_; }
  ClusterContext* cluster() { return cluster_; }
  bool pin_memory() const { return pin_memory_; }
  StreamWatchdog* watchdog() const { return watchdog_; }
  // For LayerBuilder; null without a transport.
  const ExportMapper* exporter() const {
    return transport_ != nullptr ? &exporter_ : nullptr;
  }

 private:
  struct Prepared {
    std::shared_ptr<PopulateTicket> ticket;
    std::shared_ptr<Layer> layer;
    std::chrono::steady_clock::time_point expires;
    // After a successful commit (TableLoader::Staged::on_commit).
    std::function<void(const std::shared_ptr<const Layer>&)> on_commit;
  };
  // Drops staged rows whose commit never came; expires held versions.
  void DropExpired();
  // Why `layer_id` is not here: NOT_FOUND, or UNAVAILABLE while this shard
  // recovers it from replicas (or cannot).
  absl::Status Missing(int64_t layer_id) const;
  // OK when `layer` still has the model `token_model` names, or this shard
  // never learnt one for it.
  absl::Status CheckTokenModel(const Layer& layer, uint64_t token_model) const;
  absl::Status DescribeExports(int64_t layer_id, ExportAccess access,
                               internal::v1::TransportResponse* response) const;

  LayerRegistry* const layers_;
  MemoryBudget* const budget_;
  ClusterContext* const cluster_;
  const bool pin_memory_;
  transport::UcxEngine* const transport_;
  ExportMapper exporter_;
  StreamWatchdog* const watchdog_;
  TableLoader* const loader_;
  TokenHashes* const hashes_;
  const Authorizer* const auth_;
  const std::string data_dir_;
  const GatherLimits limits_;
  Mutex mu_;
  std::map<std::string, Prepared> prepared_ ABSL_GUARDED_BY(mu_);
  void RememberAborted(const std::string& txn_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A transaction whose Stage stream (or StageFiles load) is still running.
  struct StagingTxn {
    std::shared_ptr<PopulateTicket> ticket;  // once the stream names it
    // A stream between ClaimTxn and SetStagingTicket: it may be taking the
    // layer claim right now, so an Abort answers only once it lets go.
    bool setting_up = false;
    std::vector<RawDone> waiting_aborts;
  };
  absl::flat_hash_map<std::string, StagingTxn> staging_txns_
      ABSL_GUARDED_BY(mu_);
  // Recently aborted transaction ids, oldest first (bounded): their late
  // Stage headers and finished loads are refused.
  absl::flat_hash_set<std::string> aborted_txns_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> aborted_order_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<LayerWatchHub> watch_hub_;
  PeriodicThread janitor_;  // DropExpired every second
};

}  // namespace engram

#endif  // ENGRAM_SERVER_PEER_SERVICE_H_
