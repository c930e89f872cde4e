// Reader side of the UCX engine: attaching a peer's exported ranges
// (read-only System V attachments, UCX mappings, or keys for gets) and
// reading them.
#include "transport/ucx_internal.h"

namespace engram::transport {
namespace ucx_internal {

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
  if (options_.use_mapped_reads && options_.read_only_attach &&
      control->shm_id >= 0) {
    absl::StatusOr<std::shared_ptr<Remote>> attached =
        AttachReadOnly(*control, regions);
    if (attached.ok()) return std::shared_ptr<RemoteRegions>(*attached);
    // No worker address: the owner described its ranges for read-only
    // attaches only (a caller without the peer right gets no UCX access).
    if (worker_address.empty()) return attached.status();
  }
  if (worker_address.empty()) {
    return absl::FailedPreconditionError(
        "the owner gave no UCX address (its ranges are for same-host "
        "read-only attaches only)");
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

absl::StatusOr<std::shared_ptr<Remote>> Engine::AttachReadOnly(
    const RegionDescriptor& control,
    const std::vector<RegionDescriptor>& regions) {
  if (regions.empty()) return absl::InvalidArgumentError("no ranges");
  auto remote = std::make_shared<Remote>();
  remote->control = control;
  std::map<int64_t, size_t> attached;  // segment id -> remote->segments
  // The range's bytes in its segment, attached once per segment.
  auto locate = [&](const RegionDescriptor& d) -> absl::StatusOr<uint8_t*> {
    if (d.shm_id < 0) return absl::UnavailableError("not System V memory");
    auto it = attached.find(d.shm_id);
    if (it == attached.end()) {
      absl::StatusOr<AttachedSegment> segment =
          AttachedSegment::Attach(d.shm_id);
      if (!segment.ok()) return segment.status();
      it = attached.emplace(d.shm_id, remote->segments.size()).first;
      remote->segments.push_back(*std::move(segment));
    }
    const AttachedSegment& segment = remote->segments[it->second];
    if (segment.creator() != remote->segments.front().creator() ||
        d.shm_offset > segment.size() ||
        d.length > segment.size() - d.shm_offset) {
      return absl::FailedPreconditionError(
          "a segment of that id is not the owner's range");
    }
    return const_cast<uint8_t*>(segment.data()) + d.shm_offset;
  };
  absl::StatusOr<uint8_t*> slots = locate(control);
  if (!slots.ok()) return slots.status();
  remote->control_mapped = reinterpret_cast<const uint64_t*>(*slots);
  // An id names a segment on this host only: another host's id may exist
  // here too. The owner's random identity in its control region tells.
  if (std::atomic_ref<uint64_t>(
          const_cast<uint64_t&>(remote->control_mapped[kIdentitySlot]))
          .load(std::memory_order_acquire) != control.generation) {
    return absl::FailedPreconditionError(
        "the segment of that id belongs to another process");
  }
  for (const RegionDescriptor& d : regions) {
    absl::StatusOr<uint8_t*> data = locate(d);
    if (!data.ok()) return data.status();
    remote->regions.push_back({d, nullptr, *data});
  }
  remote->all_mapped = true;
  return remote;
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

}  // namespace ucx_internal
}  // namespace engram::transport
