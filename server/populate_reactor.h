// The single-node Populate stream: stages a layer chunk by chunk and commits
// it when the stream ends complete.
#ifndef ENGRAM_SERVER_POPULATE_REACTOR_H_
#define ENGRAM_SERVER_POPULATE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/thread_pool.h"
#include "engram/v1/engram.grpc.pb.h"
#include "server/metrics.h"
#include "server/read_stream.h"
#include "store/gpu_tier.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"

namespace engram {

// What a populate needs from its server; every pointer is borrowed and
// outlives the call (the server drains calls before it goes).
struct PopulateEnv {
  LayerRegistry* layers = nullptr;
  MemoryBudget* budget = nullptr;
  ServerMetrics* metrics = nullptr;
  ThreadPool* pool = nullptr;
  GpuTier* gpu = nullptr;                  // null: host memory only
  StreamWatchdog* watchdog = nullptr;      // null: no idle limit
  const ExportMapper* exporter = nullptr;  // null: tables not exported
  bool pin_memory = true;
  std::string data_dir;  // --data_dir: tables are durable files there
};

// Calls `on_header` or `on_chunk` for one PopulateRequest; INVALID_ARGUMENT
// when it sets neither. The one parse of Populate messages, for the
// single-node and the cluster populate reactors.
template <typename OnHeader, typename OnChunk>
absl::Status DispatchPopulateRequest(const v1::PopulateRequest& request,
                                     OnHeader&& on_header, OnChunk&& on_chunk) {
  switch (request.kind_case()) {
    case v1::PopulateRequest::kHeader:
      return on_header(request.header());
    case v1::PopulateRequest::kChunk:
      return on_chunk(request.chunk());
    default:
      return absl::InvalidArgumentError(
          "a PopulateRequest must set header or chunk; this one sets neither");
  }
}

// A reactor that deletes itself when the call is done.
grpc::ServerReadReactor<v1::PopulateRequest>* NewPopulateReactor(
    grpc::CallbackServerContext* context, v1::PopulateResponse* response,
    const PopulateEnv& env);

// Mirrors `layer` to the GPU when there is a tier (a failure only logs: the
// layer is then served from host memory), then publishes it under `ticket`.
absl::Status MirrorAndCommit(GpuTier* gpu, LayerRegistry* layers,
                             const std::shared_ptr<PopulateTicket>& ticket,
                             std::shared_ptr<Layer> layer);

}  // namespace engram

#endif  // ENGRAM_SERVER_POPULATE_REACTOR_H_
