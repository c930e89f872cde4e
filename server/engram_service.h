// The engram.v1.EngramStore gRPC service (callback API).
#ifndef ENGRAM_SERVER_ENGRAM_SERVICE_H_
#define ENGRAM_SERVER_ENGRAM_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "common/thread_pool.h"
#include "engram/v1/engram.grpc.pb.h"
#include "proto/convert.h"
#include "server/auth.h"
#include "server/cluster_coordinator.h"
#include "server/lookup_request.h"
#include "server/metrics.h"
#include "server/pending_responses.h"
#include "server/raw_unary.h"
#include "server/read_stream.h"
#include "server/table_loader.h"
#include "server/token_hashes.h"
#include "store/gpu_tier.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"

namespace engram {

// Lookup is registered raw: the request is parsed with protobuf, but the
// response is hand-encoded around a slice that owns the gathered rows, so
// row bytes are written once (by the gather) and never copied again on the
// server. Handlers never block: large gathers and every GPU lookup run on
// `pool` and finish the call from there. With a GPU tier (`gpu`, may be
// null), lookups of mirrored layers from gpu_min_rows rows up are gathered
// on the device into pinned response buffers; a GPU error falls back to the
// CPU gather. Borrows every pointer; all must outlive the server.
// Thread-safe.
// Remove, DescribeLayer and ListLayers are raw too, parsed by ServeRaw.
class EngramService final
    : public v1::EngramStore::WithRawCallbackMethod_Lookup<
          v1::EngramStore::WithRawCallbackMethod_Remove<
              v1::EngramStore::WithRawCallbackMethod_DescribeLayer<
                  v1::EngramStore::WithRawCallbackMethod_ListLayers<
                      v1::EngramStore::WithRawCallbackMethod_Load<
                          v1::EngramStore::WithRawCallbackMethod_LookupMany<
                              v1::EngramStore::WithRawCallbackMethod_LookupTokens<
                                  v1::EngramStore::
                                      WithRawCallbackMethod_ServerInfo<
                                          v1::EngramStore::
                                              WithRawCallbackMethod_Status<
                                                  v1::EngramStore::
                                                      CallbackService>>>>>>>>> {
 public:
  // What the service serves with, all borrowed (they must outlive it) and
  // fixed before it serves. Optional parts may be null.
  struct Parts {
    LayerRegistry* layers = nullptr;
    MemoryBudget* budget = nullptr;
    ThreadPool* pool = nullptr;
    ServerMetrics* metrics = nullptr;
    GpuTier* gpu = nullptr;  // optional: the GPU tier
    ServiceLimits limits;
    // Cluster mode: Populate, Lookup and Remove go through the coordinator.
    ClusterCoordinator* cluster = nullptr;
    // Single node with --direct_reads: populated tables are exported.
    const ExportMapper* exporter = nullptr;
    // Ends populate streams that go idle.
    StreamWatchdog* watchdog = nullptr;
    // Charges hand-encoded responses until sent.
    PendingResponses* pending = nullptr;
    // Serves Load requests; without one, or in a cluster, Load is
    // FAILED_PRECONDITION.
    TableLoader* loader = nullptr;
    // Decides who may call what; without one every call is allowed.
    const Authorizer* auth = nullptr;
    // The model hashes of loaded layers (LookupTokens); may be null.
    const TokenHashes* hashes = nullptr;
    // Fills what the server (not the service) knows into a Status answer:
    // readiness, loads, recovery, cluster, process. May be empty.
    std::function<void(v1::StatusResponse*)> server_status;
  };
  explicit EngramService(const Parts& parts);
  const ExportMapper* exporter() const { return exporter_; }

  grpc::ServerReadReactor<v1::PopulateRequest>* Populate(
      grpc::CallbackServerContext* context,
      v1::PopulateResponse* response) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Remove(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DescribeLayer(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListLayers(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // Every lookup is prepared (checked) first; the rows of all land in one
  // response buffer, each gathered as Lookup would (never on the GPU tier:
  // the calls it serves are decode-sized).
  grpc::ServerUnaryReactor* LookupMany(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  // Token ids in: each layer's model hash (TokenHashes) turns them into
  // fused ids, then the rows are served as LookupMany serves them.
  grpc::ServerUnaryReactor* LookupTokens(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ServerInfo(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;

 private:
  // Where a lookup's rows come from. Every backend fills the caller's rows
  // and reports through RowsDone(status, on_gpu) once, on any thread.
  enum class Backend { kLocal, kGpu, kCluster };
  using RowsDone = std::function<void(absl::Status, bool)>;
  Backend BackendFor(const LookupCall& call, bool allow_gpu) const;
  // kLocal and kCluster never block the caller (big work goes to the pool);
  // kGpu blocks on the device and is called from the pool.
  void GatherInto(const std::shared_ptr<LookupCall>& call, Backend backend,
                  DType out_dtype, uint8_t* rows, RowsDone done);
  // The raw response: header + rows in one charged slice.
  void ServeRows(const grpc::CallbackServerContext& context,
                 grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response,
                 std::shared_ptr<LookupCall> call);
  // Prepares every call (then `check`, may be empty), sizes the one
  // response and gathers each call's rows into it: LookupMany's and
  // LookupTokens' serving. `calls` is not empty.
  void ServeMany(
      const grpc::CallbackServerContext& context,
      grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response,
      Method method, const std::vector<std::shared_ptr<LookupCall>>& calls,
      const std::function<absl::Status(int, const LookupCall&)>& check);
  // as_values: float32 values in a protobuf (debugging, grpcurl).
  void ServeValues(const grpc::CallbackServerContext& context,
                   grpc::ServerUnaryReactor* reactor,
                   grpc::ByteBuffer* response,
                   std::shared_ptr<LookupCall> call);
  void FillServerInfo(v1::ServerInfoResponse* info) const;
  void Finish(grpc::ServerUnaryReactor* reactor, Method rpc,
              const absl::Status& status);
  void RemoveParsed(const v1::RemoveRequest& request,
                    v1::RemoveResponse* response, RawDone done);
  // Nullptr when the caller may call `rpc` (fills `caller`), else the
  // finished reactor of the refused call.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                   Method rpc, Caller* caller = nullptr);
  // Records each final status of `rpc` in the metrics.
  std::function<void(const absl::Status&)> Observer(Method rpc);

  LayerRegistry* const layers_;
  MemoryBudget* const budget_;
  ThreadPool* const pool_;
  ServerMetrics* const metrics_;
  GpuTier* const gpu_;
  const ServiceLimits limits_;
  ClusterCoordinator* const cluster_;
  const ExportMapper* const exporter_;
  StreamWatchdog* const watchdog_;
  PendingResponses* const pending_;
  TableLoader* const loader_;
  const Authorizer* const auth_;
  const TokenHashes* const hashes_;
  const std::function<void(v1::StatusResponse*)> server_status_;
  const std::chrono::steady_clock::time_point started_ =
      std::chrono::steady_clock::now();
};

}  // namespace engram

#endif  // ENGRAM_SERVER_ENGRAM_SERVICE_H_
