#include "transport/ucx_engine.h"

#include <cstdlib>

#include "transport/ucx_internal.h"
#include "transport/ucx_policy.h"

namespace engram::transport {

bool UcxCompiledIn() { return true; }

namespace ucx_internal {

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
  absl::StatusOr<UcxSettings> settings =
      UcxSettingsFor(std::getenv("UCX_TLS"), std::getenv("UCX_NET_DEVICES"),
                     options_.same_host_only, options_.tcp_interface);
  if (!settings.ok()) return settings.status();
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcxError("ucp_config_read", s);
  s = ucp_config_modify(config, "TLS", settings->tls.c_str());
  if (s == UCS_OK && settings->net_devices.has_value()) {
    s = ucp_config_modify(config, "NET_DEVICES",
                          settings->net_devices->c_str());
  }
  if (s != UCS_OK) {
    ucp_config_release(config);
    return UcxError("restricting UCX's transports", s);
  }
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
  if (absl::Status r = RestrictOwnSysvSegments(
          options_.shm_mode, static_cast<gid_t>(options_.shm_group));
      !r.ok()) {
    return r;
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  ucp_mem_query(control_memh_, &attr);
  slots_ = static_cast<uint64_t*>(attr.address);
  std::memset(slots_, 0, kEpochSlots * sizeof(uint64_t));
  const uint64_t identity =
      (uint64_t{std::random_device()()} << 32) | std::random_device()() | 1;
  Slot(slots_, kIdentitySlot).store(identity, std::memory_order_release);
  Beat();
  void* rkey = nullptr;
  size_t rkey_length = 0;
  s = ucp_rkey_pack(context_, control_memh_, &rkey, &rkey_length);
  if (s != UCS_OK) return UcxError("ucp_rkey_pack", s);
  RegionDescriptor control;
  control.base = reinterpret_cast<uint64_t>(slots_);
  control.length = kEpochSlots * sizeof(uint64_t);
  control.generation = identity;
  if (std::optional<SysvLocation> at = SysvSegmentAt(slots_)) {
    control.shm_id = at->shm_id;
    control.shm_offset = at->offset;
  }
  control.rkey.assign(static_cast<const char*>(rkey), rkey_length);
  ucp_rkey_buffer_release(rkey);
  control_descriptor_ = control.Serialize();
  {
    MutexLock lock(&mu_);
    for (uint32_t i = kEpochSlots; i-- > kIdentitySlot + 1;) {
      free_slots_.push_back(i);
    }
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
  const bool restricted =
      RestrictOwnSysvSegments(options_.shm_mode,
                              static_cast<gid_t>(options_.shm_group))
          .ok();
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
  if (std::optional<SysvLocation> at = SysvSegmentAt(address)) {
    d.shm_id = at->shm_id;
    d.shm_offset = at->offset;
  }
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

}  // namespace ucx_internal

absl::StatusOr<std::unique_ptr<UcxEngine>> UcxEngine::Create(
    EngineOptions options) {
  auto engine = std::make_unique<ucx_internal::Engine>(options);
  if (absl::Status s = engine->Init(); !s.ok()) return s;
  return engine;
}

}  // namespace engram::transport
