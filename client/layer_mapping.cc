#include "client/layer_mapping.h"

#include <algorithm>
#include <atomic>
#include <map>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "transport/descriptor.h"

namespace engram {
namespace {

using internal::v1::LayerMapping;
using transport::RegionDescriptor;

absl::StatusOr<RegionDescriptor> ParseSysv(const std::string& bytes) {
  absl::StatusOr<RegionDescriptor> d = RegionDescriptor::Parse(bytes);
  if (!d.ok()) return d.status();
  if (d->shm_id < 0) {
    return absl::FailedPreconditionError(
        "the server's tables are not in System V shared memory");
  }
  return d;
}

// The host part of `m` into `v` (tables, epoch slots, attachments).
absl::Status MapHost(const LayerMapping& m, MappedVersion* v) {
  if (!m.has_host()) {
    return absl::FailedPreconditionError(
        m.note().empty() ? "the server does not export its host tables"
                         : m.note());
  }
  const internal::v1::TransportResponse& host = m.host();
  absl::StatusOr<RegionDescriptor> control =
      ParseSysv(host.control_descriptor());
  if (!control.ok()) return control.status();
  std::map<int64_t, size_t> attached;  // segment id -> v->attachments
  auto locate = [&](const RegionDescriptor& d) -> absl::StatusOr<uint8_t*> {
    auto it = attached.find(d.shm_id);
    if (it == attached.end()) {
      absl::StatusOr<transport::AttachedSegment> segment =
          transport::AttachedSegment::Attach(d.shm_id);
      if (!segment.ok()) return segment.status();
      it = attached.emplace(d.shm_id, v->attachments.size()).first;
      v->attachments.push_back(*std::move(segment));
    }
    const transport::AttachedSegment& s = v->attachments[it->second];
    if (s.creator() != v->attachments.front().creator() ||
        d.shm_offset > s.size() || d.length > s.size() - d.shm_offset) {
      return absl::FailedPreconditionError(
          "a segment of that id is not the server's range");
    }
    return const_cast<uint8_t*>(s.data()) + d.shm_offset;
  };
  absl::StatusOr<uint8_t*> slots_at = locate(*control);
  if (!slots_at.ok()) return slots_at.status();
  const auto* slots = reinterpret_cast<const uint64_t*>(*slots_at);
  const uint64_t num_slots = control->length / sizeof(uint64_t);
  // An id names a segment on this host only: the identity tells whether
  // it is the server's.
  if (num_slots <= transport::kIdentitySlot ||
      std::atomic_ref<uint64_t>(
          const_cast<uint64_t&>(slots[transport::kIdentitySlot]))
              .load(std::memory_order_acquire) != control->generation) {
    return absl::FailedPreconditionError(
        "the shared memory of that id belongs to another process (is the "
        "server on another host or in another IPC namespace?)");
  }
  const LayerLayout& layout = v->layout;
  if (host.heads_size() != layout.num_heads()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the server exports ", host.heads_size(),
                     " heads; the layer has ", layout.num_heads()));
  }
  for (int h = 0; h < layout.num_heads(); ++h) {
    const auto& ranges = host.heads(h).ranges();
    if (ranges.size() != 1 || ranges[0].offset() != 0 ||
        ranges[0].length() < layout.table_bytes(h)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "head ", h,
          " is not one exported range holding the whole table (a cluster "
          "shard's share): zero-copy lookups need a single node"));
    }
    absl::StatusOr<RegionDescriptor> d = ParseSysv(ranges[0].access());
    if (!d.ok()) return d.status();
    if (d->length < layout.table_bytes(h) || d->epoch_slot >= num_slots) {
      return absl::FailedPreconditionError(
          absl::StrCat("head ", h, "'s range descriptor does not fit it"));
    }
    absl::StatusOr<uint8_t*> table = locate(*d);
    if (!table.ok()) return table.status();
    v->tables.push_back(*table);
    v->epoch_slots.push_back(slots + d->epoch_slot);
    v->generations.push_back(d->generation);
  }
  for (const auto& [shm_id, index] : attached) {
    const transport::AttachedSegment& s = v->attachments[index];
    v->extents.push_back({s.data(), s.size(), shm_id});
  }
  return absl::OkStatus();
}

}  // namespace

MappedVersion MapLayer(const LayerMapping& m) {
  MappedVersion v;
  v.version = m.version();
  v.token_model = m.token_model();
  v.layout = LayoutOf(m.config());
  v.host_why = MapHost(m, &v);
  if (!v.host_why.ok()) {
    v.tables.clear();
    v.epoch_slots.clear();
    v.generations.clear();
    v.extents.clear();
    v.attachments.clear();
  }
  if (m.gpu_uuid().empty() || m.gpu_tables_size() != v.layout.num_heads()) {
    v.gpu_why = absl::FailedPreconditionError(
        m.note().empty() ? "the server holds no GPU copy of the layer"
                         : m.note());
  } else {
    v.gpu_uuid = m.gpu_uuid();
    for (const internal::v1::GpuTable& t : m.gpu_tables()) {
      v.gpu_handles.push_back(t.ipc_handle());
      v.gpu_offsets.push_back(t.offset());
    }
  }
  return v;
}

LayerMappingWatch::LayerMappingWatch(
    std::shared_ptr<grpc::Channel> channel, int64_t layer_id, Options options,
    std::function<void(MappingUpdate)> on_update)
    : stub_(internal::v1::EngramPeer::NewStub(std::move(channel))),
      layer_id_(layer_id),
      options_(std::move(options)),
      on_update_(std::move(on_update)) {
  thread_ = std::thread([this] { Run(); });
}

LayerMappingWatch::~LayerMappingWatch() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }
  wake_.notify_all();
  thread_.join();
}

void LayerMappingWatch::Release(uint64_t version) {
  MutexLock lock(&mu_);
  if (stream_ == nullptr) return;
  internal::v1::WatchLayerRequest request;
  request.set_release_version(version);
  stream_->Write(request);
}

void LayerMappingWatch::StopUpdates() {
  MutexLock lock(&callback_mu_);
  updates_stopped_ = true;
}

void LayerMappingWatch::Deliver(MappingUpdate update) {
  MutexLock lock(&callback_mu_);
  if (!updates_stopped_) on_update_(std::move(update));
}

void LayerMappingWatch::Run() {
  Backoff backoff(options_.reconnect);
  while (true) {
    grpc::ClientContext context;
    if (options_.decorate) options_.decorate(&context);
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
      context_ = &context;
    }
    std::unique_ptr<Stream> stream = stub_->WatchLayer(&context);
    internal::v1::WatchLayerRequest first;
    first.set_layer_id(layer_id_);
    first.set_gpu(options_.gpu);
    bool ok;
    {
      MutexLock lock(&mu_);
      stream_ = stream.get();
      ok = stream_->Write(first);
    }
    LayerMapping mapping;
    while (ok && stream->Read(&mapping)) {
      backoff.Reset();
      MappingUpdate update;
      if (mapping.state() == LayerMapping::PRESENT) {
        update.state = MappingUpdate::kPresent;
        update.mapped = std::make_shared<MappedVersion>(MapLayer(mapping));
      } else {
        update.state = MappingUpdate::kNotFound;
        update.why = absl::NotFoundError(
            absl::StrCat("layer ", layer_id_, " not found"));
      }
      Deliver(std::move(update));
    }
    {
      MutexLock lock(&mu_);
      stream_ = nullptr;
    }
    const grpc::Status status = stream->Finish();
    {
      MutexLock lock(&mu_);
      context_ = nullptr;
      if (stopping_) return;
    }
    Deliver({MappingUpdate::kUnavailable, nullptr,
             absl::UnavailableError(
                 absl::StrCat("the server's WatchLayer stream ended (",
                              status.error_message(), "); reconnecting"))});
    MutexLock lock(&mu_);
    wake_.wait_for(
        lock, backoff.Next(),
        [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
    if (stopping_) return;
  }
}

}  // namespace engram
