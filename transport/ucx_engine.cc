#include "transport/ucx_engine.h"

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
#include <set>
#include <shared_mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "transport/descriptor.h"
#include "transport/shm_permissions.h"

namespace engram::transport {

bool UcxCompiledIn() { return true; }

namespace {

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
constexpr uint32_t kHeartbeatSlot = 0;
constexpr auto kHeartbeatEvery = std::chrono::milliseconds(50);
constexpr auto kHeartbeatStale = std::chrono::seconds(2);

uint64_t SteadyNanos() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          Clock::now().time_since_epoch())
          .count());
}

absl::Status UcxError(const char* what, ucs_status_t status) {
  return absl::UnavailableError(
      absl::StrCat(what, ": ", ucs_status_string(status)));
}

std::atomic_ref<uint64_t> Slot(uint64_t* slots, uint32_t index) {
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
    uint8_t* mapped = nullptr;
  };
  ~Remote() override {
    for (Region& r : regions)
      if (r.rkey != nullptr) ucp_rkey_destroy(r.rkey);
    if (control_rkey != nullptr) ucp_rkey_destroy(control_rkey);
  }
  bool mapped() const override { return all_mapped; }
  bool fast() const override { return all_mapped || endpoint->rdma; }
  bool broken() const override { return endpoint->failed.load(); }
  std::string transport() const override {
    return all_mapped ? "mapped" : endpoint->transport;
  }

  std::shared_ptr<Endpoint> endpoint;
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

Endpoint::~Endpoint() { Close(false); }

void Endpoint::Close(bool force) {
  std::unique_lock<std::shared_mutex> lock(mu);
  if (ep == nullptr) return;
  failed.store(true);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* request = ucp_ep_close_nbx(ep, &param);
  ep = nullptr;
  if (UCS_PTR_IS_PTR(request)) engine->DeferClose(request);
}

absl::Status Engine::Init() {
  // Exports are placed at fixed addresses inside a table's reservation; a
  // huge-page segment could not be (and would reserve the whole range).
  // These are transport settings UCX reads from the environment only; an
  // operator's own value wins.
  setenv("UCX_SYSV_HUGETLB_MODE", "n", 0);
  setenv("UCX_POSIX_HUGETLB_MODE", "n", 0);
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcxError("ucp_config_read", s);
  ucp_params_t params{};
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;
  s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return UcxError("ucp_init", s);

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_MULTI;
  s = ucp_worker_create(context_, &wp, &worker_);
  if (s != UCS_OK) return UcxError("ucp_worker_create", s);
  s = ucp_worker_get_efd(worker_, &efd_);
  if (s != UCS_OK) return UcxError("ucp_worker_get_efd", s);
  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  s = ucp_worker_get_address(worker_, &address, &address_length);
  if (s != UCS_OK) return UcxError("ucp_worker_get_address", s);
  address_.assign(reinterpret_cast<const char*>(address), address_length);
  ucp_worker_release_address(worker_, address);

  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  mp.length = kEpochSlots * sizeof(uint64_t);
  mp.flags = UCP_MEM_MAP_ALLOCATE;
  mp.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE |
            UCP_MEM_MAP_PROT_REMOTE_READ;
  s = ucp_mem_map(context_, &mp, &control_memh_);
  if (s != UCS_OK) return UcxError("allocating the epoch region", s);
  if (absl::Status r = RestrictOwnSysvSegments(0600); !r.ok()) return r;
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  ucp_mem_query(control_memh_, &attr);
  slots_ = static_cast<uint64_t*>(attr.address);
  std::memset(slots_, 0, kEpochSlots * sizeof(uint64_t));
  Beat();
  void* rkey = nullptr;
  size_t rkey_length = 0;
  s = ucp_rkey_pack(context_, control_memh_, &rkey, &rkey_length);
  if (s != UCS_OK) return UcxError("ucp_rkey_pack", s);
  RegionDescriptor control;
  control.base = reinterpret_cast<uint64_t>(slots_);
  control.length = kEpochSlots * sizeof(uint64_t);
  control.rkey.assign(static_cast<const char*>(rkey), rkey_length);
  ucp_rkey_buffer_release(rkey);
  control_descriptor_ = control.Serialize();
  {
    MutexLock lock(&mu_);
    for (uint32_t i = kEpochSlots; i-- > 1;) free_slots_.push_back(i);
  }
  // Generations differ across restarts, so a stale key never validates.
  next_generation_ =
      (static_cast<uint64_t>(Clock::now().time_since_epoch().count()) &
       0xffff'ffffULL)
          << 24 |
      1;
  progress_ = std::thread([this] { ProgressLoop(); });
  return absl::OkStatus();
}

Engine::~Engine() {
  stopping_ = true;
  if (progress_.joinable()) {
    Wake();
    progress_.join();
  }
  UnmapRetired(true);
  if (control_memh_ != nullptr) ucp_mem_unmap(context_, control_memh_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

absl::StatusOr<ExportedRange> Engine::Export(uint8_t* address, size_t length) {
  uint32_t slot;
  {
    MutexLock lock(&mu_);
    if (free_slots_.empty()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("all ", kEpochSlots, " export slots are in use"));
    }
    slot = free_slots_.back();
    free_slots_.pop_back();
  }
  auto free_slot = [this, slot] {
    MutexLock lock(&mu_);
    free_slots_.push_back(slot);
  };
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                  UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  mp.address = address;
  mp.length = length;
  mp.flags = UCP_MEM_MAP_ALLOCATE | UCP_MEM_MAP_FIXED;
  mp.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE |
            UCP_MEM_MAP_PROT_REMOTE_READ;
  ucp_mem_h memh = nullptr;
  ucs_status_t s = ucp_mem_map(context_, &mp, &memh);
  if (s != UCS_OK) {
    free_slot();
    return UcxError("ucp_mem_map of a table range", s);
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  ucp_mem_query(memh, &attr);
  void* rkey = nullptr;
  size_t rkey_length = 0;
  // UCX made the segment group-writable: owner-only before anyone learns
  // where it is.
  const bool restricted = RestrictOwnSysvSegments(0600).ok();
  if (!restricted || attr.address != address || attr.length < length ||
      (s = ucp_rkey_pack(context_, memh, &rkey, &rkey_length)) != UCS_OK) {
    // UCX placed it elsewhere: our reservation at `address` is gone, so
    // put anonymous memory back before reporting the failure.
    ucp_mem_unmap(context_, memh);
    mmap(address, length, PROT_READ | PROT_WRITE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    free_slot();
    return absl::UnavailableError(
        "UCX could not export a table range in place");
  }
  RegionDescriptor d;
  d.base = reinterpret_cast<uint64_t>(address);
  d.length = length;
  d.epoch_slot = slot;
  d.generation = next_generation_.fetch_add(1);
  d.rkey.assign(static_cast<const char*>(rkey), rkey_length);
  ucp_rkey_buffer_release(rkey);
  Slot(slots_, slot).store(d.generation, std::memory_order_seq_cst);

  ExportedRange range;
  range.length = length;
  range.descriptor = d.Serialize();
  range.release = [this, memh, slot] {
    // Retire at once (a get reader that still sees the generation after its
    // data arrived read live memory); unmap after the grace period.
    Slot(slots_, slot).store(0, std::memory_order_seq_cst);
    RetireLater(memh, slot);
  };
  return range;
}

void Engine::RetireLater(ucp_mem_h memh, uint32_t slot) {
  MutexLock lock(&mu_);
  retired_.push_back({Clock::now() + kRetireGrace, memh, slot});
}

void Engine::UnmapRetired(bool all) {
  std::vector<Retired> due;
  {
    MutexLock lock(&mu_);
    const Clock::time_point now = Clock::now();
    while (!retired_.empty() && (all || retired_.front().unmap_at <= now)) {
      due.push_back(retired_.front());
      retired_.pop_front();
    }
  }
  for (const Retired& r : due) ucp_mem_unmap(context_, r.memh);
  MutexLock lock(&mu_);
  for (const Retired& r : due) free_slots_.push_back(r.slot);
}

absl::StatusOr<std::shared_ptr<Endpoint>> Engine::GetEndpoint(
    const std::string& address, bool peer_errors) {
  MutexLock lock(&endpoints_mu_);
  const std::string key = (peer_errors ? "p" : "n") + address;
  auto it = endpoints_.find(key);
  if (it != endpoints_.end()) {
    if (auto ep = it->second.lock(); ep != nullptr && !ep->failed.load())
      return ep;
  }
  auto endpoint = std::make_shared<Endpoint>();
  endpoint->engine = this;
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(address.data());
  params.err_mode =
      peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t) {
    // The peer failed: no new posts; outstanding gets complete with errors.
    static_cast<Endpoint*>(arg)->failed.store(true);
  };
  params.err_handler.arg = endpoint.get();
  ucs_status_t s = ucp_ep_create(worker_, &params, &endpoint->ep);
  if (s != UCS_OK) return UcxError("ucp_ep_create", s);
  // Which transports carry RMA: only native one-sided ones are "fast".
  char* text = nullptr;
  size_t size = 0;
  if (FILE* f = open_memstream(&text, &size); f != nullptr) {
    ucp_ep_print_info(endpoint->ep, f);
    fclose(f);
    std::string info(text, size);
    free(text);
    for (const char* tl : {"rc_mlx5", "rc_verbs", "dc_mlx5", "cma", "xpmem",
                           "knem", "sysv", "posix", "tcp"}) {
      if (info.find(tl) != std::string::npos) {
        endpoint->transport = tl;
        break;
      }
    }
    endpoint->rdma = info.find("rc_") != std::string::npos ||
                     info.find("dc_mlx5") != std::string::npos;
  }
  endpoints_[key] = endpoint;
  return endpoint;
}

absl::StatusOr<std::shared_ptr<RemoteRegions>> Engine::Attach(
    const std::string& worker_address, const std::string& control_descriptor,
    const std::vector<std::string>& region_descriptors) {
  absl::StatusOr<RegionDescriptor> control =
      RegionDescriptor::Parse(control_descriptor);
  if (!control.ok()) return control.status();
  std::vector<RegionDescriptor> regions;
  for (const std::string& bytes : region_descriptors) {
    absl::StatusOr<RegionDescriptor> d = RegionDescriptor::Parse(bytes);
    if (!d.ok()) return d.status();
    if (d->epoch_slot >= kEpochSlots) {
      return absl::InvalidArgumentError(
          "region descriptor's epoch slot is out of range");
    }
    regions.push_back(*std::move(d));
  }
  // A mapped read never goes through its endpoint, and a failed peer's
  // mapping stays readable, so mapping comes first, over an endpoint
  // without failure reports (UCX leaves its shared-memory transports out of
  // endpoints that want them). Unmapped ranges are read with gets over an
  // endpoint that reports peer failures, where the transports allow one.
  absl::StatusOr<std::shared_ptr<Remote>> remote =
      absl::UnavailableError("no endpoint");
  if (options_.use_mapped_reads) {
    absl::StatusOr<std::shared_ptr<Endpoint>> plain =
        GetEndpoint(worker_address, /*peer_errors=*/false);
    if (!plain.ok()) return plain.status();
    remote = Unpack(*std::move(plain), *control, regions);
    if (remote.ok() && (*remote)->all_mapped) {
      return std::shared_ptr<RemoteRegions>(*std::move(remote));
    }
  }
  absl::StatusOr<std::shared_ptr<Endpoint>> reporting =
      GetEndpoint(worker_address, /*peer_errors=*/true);
  if (reporting.ok()) {
    absl::StatusOr<std::shared_ptr<Remote>> r =
        Unpack(*std::move(reporting), *control, regions);
    if (r.ok() || !remote.ok()) remote = std::move(r);
  } else if (!options_.use_mapped_reads) {
    absl::StatusOr<std::shared_ptr<Endpoint>> plain =
        GetEndpoint(worker_address, /*peer_errors=*/false);
    if (!plain.ok()) return plain.status();
    remote = Unpack(*std::move(plain), *control, regions);
  }
  if (!remote.ok()) return remote.status();
  return std::shared_ptr<RemoteRegions>(*std::move(remote));
}

absl::StatusOr<std::shared_ptr<Remote>> Engine::Unpack(
    std::shared_ptr<Endpoint> endpoint, const RegionDescriptor& control,
    const std::vector<RegionDescriptor>& regions) {
  auto remote = std::make_shared<Remote>();
  remote->endpoint = std::move(endpoint);
  remote->control = control;
  for (const RegionDescriptor& d : regions) remote->regions.push_back({d});
  std::shared_lock<std::shared_mutex> lock(remote->endpoint->mu);
  if (remote->endpoint->ep == nullptr) {
    return absl::UnavailableError("the endpoint to the peer closed");
  }
  ucp_ep_h ep = remote->endpoint->ep;
  ucs_status_t s = ucp_ep_rkey_unpack(ep, remote->control.rkey.data(),
                                      &remote->control_rkey);
  if (s != UCS_OK) return UcxError("unpacking the peer's epoch key", s);
  bool all_mapped = true;
  void* control_local = nullptr;
  if (options_.use_mapped_reads &&
      ucp_rkey_ptr(remote->control_rkey, remote->control.base,
                   &control_local) == UCS_OK) {
    remote->control_mapped = static_cast<const uint64_t*>(control_local);
  } else {
    all_mapped = false;
  }
  for (Remote::Region& r : remote->regions) {
    s = ucp_ep_rkey_unpack(ep, r.desc.rkey.data(), &r.rkey);
    if (s != UCS_OK) return UcxError("unpacking a table range key", s);
    void* local = nullptr;
    if (options_.use_mapped_reads &&
        ucp_rkey_ptr(r.rkey, r.desc.base, &local) == UCS_OK) {
      r.mapped = static_cast<uint8_t*>(local);
    } else {
      all_mapped = false;
    }
  }
  remote->all_mapped = all_mapped && !remote->regions.empty();
  return remote;
}

void Engine::Read(std::shared_ptr<RemoteRegions> regions,
                  std::vector<ReadOp> ops, Clock::time_point deadline,
                  std::function<void(absl::Status)> done) {
  auto remote = std::static_pointer_cast<Remote>(std::move(regions));
  for (const ReadOp& op : ops) {
    if (op.region >= remote->regions.size() ||
        op.offset > remote->regions[op.region].desc.length ||
        op.length > remote->regions[op.region].desc.length - op.offset) {
      done(absl::OutOfRangeError(
          absl::StrCat("read of ", op.length, " bytes at ", op.offset,
                       " in region ", op.region, " is outside it")));
      return;
    }
  }
  if (remote->all_mapped) {
    // Plain copies in the caller's order (the order the destination is
    // written in, which keeps the stores streaming), then the epoch slots
    // of the ranges read: the mapping keeps the pages, but a range whose
    // layer was freed meanwhile must not be returned as current data.
    for (const ReadOp& op : ops) {
      std::memcpy(op.dst, remote->regions[op.region].mapped + op.offset,
                  op.length);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    uint32_t last_checked = UINT32_MAX;
    for (const ReadOp& op : ops) {
      if (op.region == last_checked) continue;
      last_checked = op.region;
      const RegionDescriptor& d = remote->regions[op.region].desc;
      const uint64_t epoch =
          std::atomic_ref<uint64_t>(
              const_cast<uint64_t&>(remote->control_mapped[d.epoch_slot]))
              .load(std::memory_order_acquire);
      if (epoch != d.generation) {
        done(absl::AbortedError(
            "a table range was released while it was read (layer removed)"));
        return;
      }
    }
    const uint64_t beat =
        std::atomic_ref<uint64_t>(
            const_cast<uint64_t&>(remote->control_mapped[kHeartbeatSlot]))
            .load(std::memory_order_acquire);
    const uint64_t now = SteadyNanos();
    if (now > beat &&
        now - beat > static_cast<uint64_t>(
                         std::chrono::nanoseconds(kHeartbeatStale).count())) {
      done(absl::UnavailableError(
          absl::StrCat("the owner process has not run for ",
                       (now - beat) / 1000000, " ms (exited or stopped)")));
      return;
    }
    done(absl::OkStatus());
    return;
  }
  // Gets: sorted by source, merged where source and destination both
  // continue the previous op (fewer, larger requests).
  std::sort(ops.begin(), ops.end(), [](const ReadOp& a, const ReadOp& b) {
    return a.region != b.region ? a.region < b.region : a.offset < b.offset;
  });
  std::vector<ReadOp> merged;
  merged.reserve(ops.size());
  for (const ReadOp& op : ops) {
    if (!merged.empty()) {
      ReadOp& last = merged.back();
      if (last.region == op.region && last.offset + last.length == op.offset &&
          last.dst + last.length == op.dst) {
        last.length += op.length;
        continue;
      }
    }
    merged.push_back(op);
  }
  auto* job = new ReadJob;
  job->remote = std::move(remote);
  job->ops = std::move(merged);
  job->deadline = deadline;
  job->done = std::move(done);
  std::vector<bool> seen(job->remote->regions.size(), false);
  for (const ReadOp& op : job->ops) {
    if (!seen[op.region]) job->touched.push_back(op.region);
    seen[op.region] = true;
  }
  {
    MutexLock lock(&mu_);
    active_.insert(job);
  }
  // Without native one-sided reads the owner's UCX serves the get from its
  // own memory, so the ranges are checked live first (retired ranges stay
  // mapped for a grace period, longer than any read's deadline).
  if (job->remote->endpoint->rdma) {
    job->phase = ReadJob::kData;
    PostGets(job);
  } else {
    job->phase = ReadJob::kCheckBefore;
    PostGets(job);
  }
  Release(job);  // the poster's hold
  Wake();        // the progress thread drives the gets
}

// One get of `job` into `dst`; false (job failed) when UCX refuses it. The
// caller holds the endpoint's lock shared.
bool Engine::PostGet(ReadJob* job, ucp_ep_h ep, void* dst, size_t length,
                     uint64_t remote_address, ucp_rkey_h rkey) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Engine::OnGetDone;
  param.user_data = job;
  job->holds.fetch_add(1);
  void* request = ucp_get_nbx(ep, dst, length, remote_address, rkey, &param);
  if (UCS_PTR_IS_ERR(request)) {
    job->Fail(UcxError("ucp_get_nbx", UCS_PTR_STATUS(request)));
    job->holds.fetch_sub(1);
    return false;
  }
  if (request == nullptr) job->holds.fetch_sub(1);  // done in place
  return true;
}

void Engine::PostGets(ReadJob* job) {
  Endpoint& endpoint = *job->remote->endpoint;
  std::shared_lock<std::shared_mutex> lock(endpoint.mu);
  if (endpoint.ep == nullptr || endpoint.failed.load()) {
    job->Fail(absl::UnavailableError("the endpoint to the peer failed"));
    return;
  }
  if (job->phase == ReadJob::kData) {
    for (const ReadOp& op : job->ops) {
      const Remote::Region& r = job->remote->regions[op.region];
      if (!PostGet(job, endpoint.ep, op.dst, op.length, r.desc.base + op.offset,
                   r.rkey)) {
        return;
      }
    }
    return;
  }
  // An epoch check: the slots of the regions read, from the control region.
  job->epochs.assign(job->touched.size(), 0);
  for (size_t i = 0; i < job->touched.size(); ++i) {
    const uint32_t slot = job->remote->regions[job->touched[i]].desc.epoch_slot;
    if (!PostGet(job, endpoint.ep, &job->epochs[i], sizeof(uint64_t),
                 job->remote->control.base + uint64_t{slot} * sizeof(uint64_t),
                 job->remote->control_rkey)) {
      return;
    }
  }
}

void Engine::OnGetDone(void* request, ucs_status_t status, void* user_data) {
  auto* job = static_cast<ReadJob*>(user_data);
  if (status != UCS_OK) {
    job->remote->endpoint->failed.store(true);
    job->Fail(UcxError("remote read", status));
  }
  ucp_request_free(request);
  Release(job);
}

void Engine::Release(ReadJob* job) {
  if (job->holds.fetch_sub(1) != 1) return;
  static_cast<Engine*>(job->remote->endpoint->engine)->JobReady(job);
}

bool Engine::EpochsMatch(ReadJob* job) {
  for (size_t i = 0; i < job->touched.size(); ++i) {
    if (job->epochs[i] != job->remote->regions[job->touched[i]].desc.generation)
      return false;
  }
  return true;
}

// On the progress thread, outside any UCX callback: moves the job to its
// next phase, or ends it.
void Engine::Finish(ReadJob* job) {
  absl::Status status = job->Status();
  if (status.ok() && job->phase != ReadJob::kData && !EpochsMatch(job)) {
    status = absl::AbortedError(
        "a table range was released while it was read (layer removed)");
  }
  if (status.ok() && job->phase != ReadJob::kCheckAfter) {
    job->holds.store(1);
    job->phase = job->phase == ReadJob::kCheckBefore ? ReadJob::kData
                                                     : ReadJob::kCheckAfter;
    PostGets(job);
    Release(job);
    return;
  }
  if (job->timed_out && !status.ok()) {
    status = absl::DeadlineExceededError("remote read passed its deadline");
  }
  {
    MutexLock lock(&mu_);
    active_.erase(job);
  }
  job->done(std::move(status));
  delete job;
}

void Engine::RunReady() {
  while (true) {
    ReadJob* job;
    {
      MutexLock lock(&mu_);
      if (ready_.empty()) return;
      job = ready_.front();
      ready_.pop_front();
    }
    Finish(job);
  }
}

void Engine::ExpireJobs() {
  std::vector<std::shared_ptr<Endpoint>> expired;
  {
    MutexLock lock(&mu_);
    const Clock::time_point now = Clock::now();
    for (ReadJob* job : active_) {
      if (!job->timed_out && now > job->deadline) {
        job->timed_out = true;
        expired.push_back(job->remote->endpoint);
      }
    }
  }
  // Closed endpoints' requests: free once UCX completes them (outside mu_,
  // see the lock order).
  std::vector<void*> closing;
  {
    MutexLock lock(&mu_);
    closing.swap(closing_);
  }
  std::erase_if(closing, [](void* request) {
    if (ucp_request_check_status(request) == UCS_INPROGRESS) return false;
    ucp_request_free(request);
    return true;
  });
  if (!closing.empty()) {
    MutexLock lock(&mu_);
    closing_.insert(closing_.end(), closing.begin(), closing.end());
  }
  UnmapRetired(false);
  // Force-closing cancels the endpoint's gets; their callbacks finish the
  // jobs. Outside mu_: the cancellation may call back at once.
  for (auto& endpoint : expired) endpoint->Close(true);
}

void Engine::ProgressLoop() {
  while (!stopping_.load()) {
    if (Clock::now() - last_beat_ >= kHeartbeatEvery) Beat();
    const unsigned progressed = ucp_worker_progress(worker_);
    RunReady();
    bool busy;
    {
      MutexLock lock(&mu_);
      busy = !active_.empty() || !closing_.empty() || !ready_.empty();
    }
    if (busy) {
      ExpireJobs();
      if (progressed == 0) sched_yield();
      continue;
    }
    if (progressed > 0) continue;
    UnmapRetired(false);
    // Idle: sleep until UCX has something (a peer's emulated get we must
    // serve, a completion) or Wake() is called.
    if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;
    pollfd fd{efd_, POLLIN, 0};
    poll(&fd, 1, static_cast<int>(kHeartbeatEvery.count()));
  }
  // Shutdown: fail what is left so no caller waits forever.
  std::vector<std::shared_ptr<Endpoint>> open;
  {
    MutexLock lock(&mu_);
    for (ReadJob* job : active_) open.push_back(job->remote->endpoint);
  }
  for (auto& endpoint : open) endpoint->Close(true);
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < give_up) {
    ucp_worker_progress(worker_);
    RunReady();
    ExpireJobs();  // also frees completed endpoint closes
    MutexLock lock(&mu_);
    if (active_.empty() && ready_.empty() && closing_.empty()) break;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxEngine>> UcxEngine::Create(
    EngineOptions options) {
  auto engine = std::make_unique<Engine>(options);
  if (absl::Status s = engine->Init(); !s.ok()) return s;
  return engine;
}

}  // namespace engram::transport
