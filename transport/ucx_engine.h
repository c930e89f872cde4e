// One-sided remote reads between engram shards over UCX (RDMA on verbs,
// shared memory on one host, TCP emulation elsewhere). The only header that
// knows UCX exists; built as a stub (Create fails) without ENGRAM_WITH_UCX.
//
// Owner side: Export() places table row ranges in UCX-allocated memory
// registered for remote read, each with an epoch slot in a small registered
// control region; the slot holds the range's generation while it lives and
// 0 once released. Reader side: Attach() connects to the owner's worker and
// unpacks its keys; Read() copies byte ranges straight into the caller's
// buffer. Where the range is mapped into this process (a read-only
// attachment of its System V segment, or UCX rkey_ptr: same host, shared
// memory) the copy is a memcpy and the mapping keeps the pages alive; otherwise
// it is ucp_get, and the epoch slots are read after the data, so a range
// released (and its memory possibly reused) while the data was read is reported
// as stale instead of returned.
#ifndef ENGRAM_TRANSPORT_UCX_ENGINE_H_
#define ENGRAM_TRANSPORT_UCX_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/export_hook.h"

namespace engram::transport {

// True when this build has UCX.
bool UcxCompiledIn();

struct EngineOptions {
  // Read mapped ranges with memcpy (rkey_ptr); false forces ucp_get even on
  // one host (tests and the benchmark compare the two).
  bool use_mapped_reads = true;
  // Owner side: permission bits of the shared-memory segments holding
  // exported ranges (UCX makes them 0660), and their group (-1: the
  // process's). A group given read (0640) can read the rows directly;
  // nobody else can attach them.
  uint32_t shm_mode = 0600;
  int64_t shm_group = -1;
  // Reader side: attach same-host System V segments read-only by id
  // (needs only read permission) before asking UCX to map them.
  bool read_only_attach = true;
  // The one network interface UCX's TCP transport may listen on and use
  // (transport/ucx_policy.h); empty (the default): TCP is left out, so the
  // engine opens no network listener. TCP cannot enforce read-only access
  // to exported ranges: name an interface on a trusted network only.
  std::string tcp_interface;
  // Shared-memory transports only (no network transport at all, whatever
  // UCX_TLS says): a single node's exports, and same-host readers.
  bool same_host_only = false;
};

// A peer's exported ranges after Attach: the endpoint and unpacked keys.
// Opaque; shared by the reads that use it, released on the last one.
class RemoteRegions {
 public:
  virtual ~RemoteRegions() = default;
  // Every range is readable through a local mapping (no network, no
  // per-read round trip).
  virtual bool mapped() const = 0;
  // Reads go over a transport with native one-sided reads (RDMA verbs or
  // a mapping); false for TCP's emulated gets.
  virtual bool fast() const = 0;
  // The endpoint failed or was closed: attach again.
  virtual bool broken() const = 0;
  // What carries the reads, for logs ("mapped", "rc_mlx5", "tcp", ...).
  virtual std::string transport() const = 0;
};

// One contiguous copy: `length` bytes at `offset` in region `region` (the
// index into Attach's descriptor list) into `dst`.
struct ReadOp {
  uint32_t region;
  uint64_t offset;
  uint8_t* dst;
  uint64_t length;
};

// Owns the UCX context, one worker (UCS_THREAD_MODE_MULTI: any thread may
// post) and its progress thread, which runs read completions. Must outlive
// every buffer exported through it and every RemoteRegions it attached.
// Thread-safe.
class UcxEngine {
 public:
  static absl::StatusOr<std::unique_ptr<UcxEngine>> Create(
      EngineOptions options = {});
  virtual ~UcxEngine() = default;

  // What a reader needs to Attach: this worker's address and the control
  // region's descriptor.
  virtual const std::string& worker_address() const = 0;
  virtual const std::string& control_descriptor() const = 0;

  // An ExportMapper that exports through this engine.
  virtual ExportMapper Mapper() = 0;

  // Connects to a peer and unpacks its range descriptors (as published in
  // ExportedRange::descriptor). Local work only; does not block on the
  // peer. INVALID_ARGUMENT for a malformed descriptor.
  virtual absl::StatusOr<std::shared_ptr<RemoteRegions>> Attach(
      const std::string& worker_address, const std::string& control_descriptor,
      const std::vector<std::string>& region_descriptors) = 0;

  // Performs `ops` (adjacent ones coalesced) and calls `done` once, on this
  // thread (mapped) or the progress thread, after no op touches a `dst`
  // any more. OUT_OF_RANGE for an op outside its region; ABORTED when a
  // range was released during the read (the data is not valid);
  // UNAVAILABLE when the endpoint failed; DEADLINE_EXCEEDED past
  // `deadline` (the endpoint is then closed).
  virtual void Read(std::shared_ptr<RemoteRegions> regions,
                    std::vector<ReadOp> ops,
                    std::chrono::steady_clock::time_point deadline,
                    std::function<void(absl::Status)> done) = 0;
};

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_UCX_ENGINE_H_
