// The UCX engine's internals, shared by its two halves: ucx_engine.cc
// (context, exports, progress thread) and ucx_reads.cc (attaching peers'
// ranges and reading them). Included by those two files only.
#ifndef ENGRAM_TRANSPORT_UCX_INTERNAL_H_
#define ENGRAM_TRANSPORT_UCX_INTERNAL_H_

#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "transport/descriptor.h"
#include "transport/sysv_segments.h"
#include "transport/ucx_engine.h"

namespace engram::transport {
namespace ucx_internal {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kEpochSlots = 1 << 16;  // 512 KiB control region
// How long a released range stays mapped (retired) before UCX unmaps it:
// longer than any peer read's deadline, so no get that passed the live check
// reads unmapped memory.
constexpr auto kRetireGrace = std::chrono::seconds(10);
// Slot 0 of the epoch region is the owner's heartbeat: its steady clock
// (CLOCK_MONOTONIC, shared by the processes of one host, which are the only
// ones that map the region), refreshed by the progress thread. A mapped
// read of an owner silent for longer than this is refused: a dead process's
// mapping stays readable, but its layers may since have been replaced by a
// restarted process.
// (kHeartbeatSlot and kIdentitySlot: transport/descriptor.h.)
constexpr auto kHeartbeatEvery = std::chrono::milliseconds(50);
constexpr auto kHeartbeatStale = std::chrono::seconds(2);

inline uint64_t SteadyNanos() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          Clock::now().time_since_epoch())
          .count());
}

inline absl::Status UcxError(const char* what, ucs_status_t status) {
  return absl::UnavailableError(
      absl::StrCat(what, ": ", ucs_status_string(status)));
}

inline std::atomic_ref<uint64_t> Slot(uint64_t* slots, uint32_t index) {
  return std::atomic_ref<uint64_t>(slots[index]);
}

class Engine;

// One ucp_ep to a peer worker, shared by every RemoteRegions attached
// through it. `mu` orders posts (shared) against the close (exclusive), so
// no thread uses the handle after it is closed.
struct Endpoint {
  Engine* engine = nullptr;
  ucp_ep_h ep = nullptr;
  std::shared_mutex mu;
  std::atomic<bool> failed{false};
  std::string transport;  // RMA lanes, from ucp_ep_print_info
  bool rdma = false;
  ~Endpoint();
  void Close(bool force);
};

class Remote final : public RemoteRegions {
 public:
  struct Region {
    RegionDescriptor desc;
    ucp_rkey_h rkey = nullptr;
    uint8_t* mapped = nullptr;  // read through it only
  };
  ~Remote() override {
    for (Region& r : regions)
      if (r.rkey != nullptr) ucp_rkey_destroy(r.rkey);
    if (control_rkey != nullptr) ucp_rkey_destroy(control_rkey);
  }
  bool mapped() const override { return all_mapped; }
  bool fast() const override { return all_mapped || endpoint->rdma; }
  bool broken() const override {
    return endpoint != nullptr && endpoint->failed.load();
  }
  std::string transport() const override {
    if (!segments.empty()) return "mapped read-only";
    return all_mapped ? "mapped" : endpoint->transport;
  }

  // Null for read-only attachments (no UCX involved).
  std::shared_ptr<Endpoint> endpoint;
  std::vector<AttachedSegment> segments;  // read-only attachments
  std::vector<Region> regions;
  RegionDescriptor control;
  ucp_rkey_h control_rkey = nullptr;
  const uint64_t* control_mapped = nullptr;  // the owner's epoch slots
  bool all_mapped = false;
};

// One Read in flight on the get path. `holds` counts the poster plus every
// get not yet completed; whoever drops it to zero hands the job to the
// progress thread, which validates epochs or finishes it.
struct ReadJob {
  std::shared_ptr<Remote> remote;
  std::vector<ReadOp> ops;
  Clock::time_point deadline;
  std::function<void(absl::Status)> done;
  std::atomic<int> holds{1};
  Mutex mu;
  absl::Status status ABSL_GUARDED_BY(mu);
  // kCheckBefore (emulated gets only) -> kData -> kCheckAfter -> done.
  enum Phase { kCheckBefore, kData, kCheckAfter } phase = kData;
  std::vector<uint32_t> touched;  // regions read
  std::vector<uint64_t> epochs;   // their slots, read after the data
  bool timed_out = false;

  void Fail(absl::Status s) {
    MutexLock lock(&mu);
    if (status.ok()) status = std::move(s);
  }
  absl::Status Status() {
    MutexLock lock(&mu);
    return status;
  }
};

class Engine final : public UcxEngine {
 public:
  explicit Engine(EngineOptions options) : options_(options) {}
  ~Engine() override;
  absl::Status Init();

  const std::string& worker_address() const override { return address_; }
  const std::string& control_descriptor() const override {
    return control_descriptor_;
  }
  ExportMapper Mapper() override {
    return [this](uint8_t* address, size_t length) {
      return Export(address, length);
    };
  }
  absl::StatusOr<std::shared_ptr<RemoteRegions>> Attach(
      const std::string& worker_address, const std::string& control_descriptor,
      const std::vector<std::string>& region_descriptors) override;
  void Read(std::shared_ptr<RemoteRegions> regions, std::vector<ReadOp> ops,
            Clock::time_point deadline,
            std::function<void(absl::Status)> done) override;

  void DeferClose(void* request) {
    MutexLock lock(&mu_);
    closing_.push_back(request);
  }
  void Wake() { ucp_worker_signal(worker_); }
  void JobReady(ReadJob* job) {
    {
      MutexLock lock(&mu_);
      ready_.push_back(job);
    }
    Wake();
  }

 private:
  absl::StatusOr<ExportedRange> Export(uint8_t* address, size_t length);
  absl::StatusOr<std::shared_ptr<Endpoint>> GetEndpoint(
      const std::string& address, bool peer_errors);
  // Same host: the owner's segments attached read-only by id, after
  // checking they are that owner's (identity slot, creator).
  absl::StatusOr<std::shared_ptr<Remote>> AttachReadOnly(
      const RegionDescriptor& control,
      const std::vector<RegionDescriptor>& regions);
  absl::StatusOr<std::shared_ptr<Remote>> Unpack(
      std::shared_ptr<Endpoint> endpoint, const RegionDescriptor& control,
      const std::vector<RegionDescriptor>& regions);
  // Posts the job's current phase: its data gets, or its epoch reads.
  void PostGets(ReadJob* job);
  static bool PostGet(ReadJob* job, ucp_ep_h ep, void* dst, size_t length,
                      uint64_t remote_address, ucp_rkey_h rkey);
  bool EpochsMatch(ReadJob* job);
  void RetireLater(ucp_mem_h memh, uint32_t slot);
  void UnmapRetired(bool all);
  static void OnGetDone(void* request, ucs_status_t status, void* user_data);
  static void Release(ReadJob* job);
  void Finish(ReadJob* job);
  void ProgressLoop();
  void Beat() {
    Slot(slots_, kHeartbeatSlot)
        .store(SteadyNanos(), std::memory_order_release);
    last_beat_ = Clock::now();
  }
  void RunReady();
  void ExpireJobs();

  const EngineOptions options_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int efd_ = -1;
  std::string address_;
  ucp_mem_h control_memh_ = nullptr;
  uint64_t* slots_ = nullptr;
  std::string control_descriptor_;
  std::atomic<uint64_t> next_generation_{1};

  Mutex mu_;
  std::vector<uint32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  // Lock order: endpoints_mu_ may be held into UCX calls; mu_ never is
  // (UCX callbacks, run under UCX's worker lock, take mu_).
  Mutex endpoints_mu_;
  std::map<std::string, std::weak_ptr<Endpoint>> endpoints_
      ABSL_GUARDED_BY(endpoints_mu_);
  std::set<ReadJob*> active_ ABSL_GUARDED_BY(mu_);
  std::deque<ReadJob*> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<void*> closing_ ABSL_GUARDED_BY(mu_);
  struct Retired {
    Clock::time_point unmap_at;
    ucp_mem_h memh;
    uint32_t slot;
  };
  std::deque<Retired> retired_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stopping_{false};
  Clock::time_point last_beat_;  // progress thread (and Init) only
  std::thread progress_;
};

}  // namespace ucx_internal
}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_UCX_INTERNAL_H_
