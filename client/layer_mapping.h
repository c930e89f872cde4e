// Same-host zero-copy access to one layer of an engramd (docs/gpu.md): the
// client side of WatchLayer. Maps the current version's host tables into
// this process read-only (the System V segments the server exports them
// in, attached by id) and carries the CUDA IPC handles of its GPU copy;
// a new mapping arrives at every replace or remove. The server keeps each
// version it sent alive until Release, so what a mapping points at stays
// valid and unchanged for as long as the reader holds it. No CUDA and no
// UCX here: the GPU side (client/device_lookup.*) builds on it. Internal to
// the client libraries.
#ifndef ENGRAM_CLIENT_LAYER_MAPPING_H_
#define ENGRAM_CLIENT_LAYER_MAPPING_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/backoff.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "transport/sysv_segments.h"

namespace engram {

// One version of a layer as this process can reach it. Immutable; the
// attachments live as long as it does.
struct MappedVersion {
  uint64_t version = 0;
  // What its ids mean to token lookups (LayerMapping.token_model).
  uint64_t token_model = 0;
  LayerLayout layout;
  // Host tables mapped read-only: head h's [N_h, D] rows at tables[h]. Empty
  // when they could not be mapped (host_why says why).
  std::vector<const uint8_t*> tables;
  // The server's epoch slot of each head's range and the generation it
  // holds while the range is exported (a released range reads otherwise).
  std::vector<const uint64_t*> epoch_slots;
  std::vector<uint64_t> generations;
  absl::Status host_why;
  // The whole attachments, for registering with CUDA.
  struct Extent {
    const uint8_t* data;
    uint64_t size;
    int64_t shm_id;  // the segment attached there
  };
  std::vector<Extent> extents;
  // The server's GPU copy: device UUID and one IPC handle (+ offset) per
  // head; empty without one (gpu_why says why).
  std::string gpu_uuid;
  std::vector<std::string> gpu_handles;
  std::vector<uint64_t> gpu_offsets;
  absl::Status gpu_why;

  std::vector<transport::AttachedSegment> attachments;
};

// What a watch knows of its layer.
struct MappingUpdate {
  enum State { kPresent, kNotFound, kUnavailable };
  State state = kUnavailable;
  std::shared_ptr<const MappedVersion> mapped;  // kPresent only
  absl::Status why;  // kNotFound / kUnavailable: the reason
};

// Parses one LayerMapping into a MappedVersion, attaching its segments.
// The host part fails (host_why) unless every head is one exported range
// holding the whole table, in segments of the process that sent it.
MappedVersion MapLayer(const internal::v1::LayerMapping& mapping);

// Watches one layer over one channel, on its own thread: calls `on_update`
// (on that thread) with every new state, reconnects with backoff after the
// stream breaks (a restarted server), and tells the server which versions
// this process stopped reading. Thread-safe; the destructor ends the
// stream (the server drops this watch's leases) and joins the thread.
class LayerMappingWatch {
 public:
  struct Options {
    bool gpu = false;  // ask for the GPU copy's IPC handles
    // Reconnecting after the stream breaks.
    BackoffPolicy reconnect{std::chrono::milliseconds(100),
                            std::chrono::milliseconds(2000), 2};
    // Adds call credentials and the like to each stream's context.
    std::function<void(grpc::ClientContext*)> decorate;
  };
  LayerMappingWatch(std::shared_ptr<grpc::Channel> channel, int64_t layer_id,
                    Options options,
                    std::function<void(MappingUpdate)> on_update);
  ~LayerMappingWatch();
  LayerMappingWatch(const LayerMappingWatch&) = delete;
  LayerMappingWatch& operator=(const LayerMappingWatch&) = delete;

  // The reader no longer reads `version`: the server may free it. A no-op
  // once the stream that leased it is gone (its leases went with it).
  void Release(uint64_t version);
  // No on_update call starts after this returns (one in progress has
  // finished); the stream and its leases stay until destruction.
  void StopUpdates();

 private:
  using Stream = grpc::ClientReaderWriter<internal::v1::WatchLayerRequest,
                                          internal::v1::LayerMapping>;
  void Run();
  void Deliver(MappingUpdate update);

  const std::unique_ptr<internal::v1::EngramPeer::Stub> stub_;
  const int64_t layer_id_;
  const Options options_;
  const std::function<void(MappingUpdate)> on_update_;
  Mutex mu_;
  std::condition_variable_any wake_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  Stream* stream_ ABSL_GUARDED_BY(mu_) = nullptr;  // writes go under mu_
  Mutex callback_mu_;  // held across each on_update call
  bool updates_stopped_ ABSL_GUARDED_BY(callback_mu_) = false;
  std::thread thread_;
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_LAYER_MAPPING_H_
