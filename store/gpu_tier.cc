#include "store/gpu_tier.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace engram {
namespace {

// Pinned allocations cost milliseconds per hundred MB, so response buffers
// are recycled; this bounds what the cache may hold.
constexpr size_t kMaxCachedPinnedBytes = size_t{2} << 30;

size_t RoundUpPow2(size_t n) {
  size_t p = 4096;
  while (p < n) p <<= 1;
  return p;
}

// Powers of two up to 1 MiB, then whole MiB: big responses waste little.
size_t PinnedCapacity(size_t n) {
  constexpr size_t kMiB = size_t{1} << 20;
  return n <= kMiB ? RoundUpPow2(n) : (n + kMiB - 1) / kMiB * kMiB;
}

}  // namespace

// A pinned response buffer; the header sits in front of the bytes handed
// out so FreeResponse finds its pool from the token alone.
struct GpuTier::PinnedBlock {
  GpuTier* owner;
  size_t capacity;
  uint8_t* data;
};

GpuLayerMirror::~GpuLayerMirror() {
  (void)gpu::SetDevice(device_);
  tables_.clear();
  table_ptrs_.reset();
  vocab_.reset();
}

absl::StatusOr<std::unique_ptr<GpuTier>> GpuTier::Open(const Options& options) {
  std::string why;
  const int count = gpu::DeviceCount(&why);
  if (count == 0) return absl::UnavailableError(why);
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu=", options.device, " but ", count,
                     " CUDA device(s) are present"));
  }
  if (absl::Status s = gpu::SetDevice(options.device); !s.ok()) return s;
  size_t free_bytes = 0, total_bytes = 0;
  if (absl::Status s = gpu::MemoryInfo(&free_bytes, &total_bytes); !s.ok()) {
    return s;
  }
  uint64_t limit = options.memory_limit_bytes;
  if (limit == 0) limit = free_bytes / 10 * 9;
  std::unique_ptr<GpuTier> tier(new GpuTier(options, limit));
  tier->device_name_ = gpu::DeviceName(options.device);
  tier->slots_.resize(std::max(1, options.streams));
  for (Slot& slot : tier->slots_) {
    absl::StatusOr<gpu::StreamHandle> stream = gpu::NewStream();
    if (!stream.ok()) return stream.status();
    slot.stream = std::move(*stream);
    absl::StatusOr<gpu::DeviceMemory<uint64_t>> error =
        gpu::NewDeviceMemory<uint64_t>(sizeof(uint64_t));
    if (!error.ok()) return error.status();
    slot.device_error = std::move(*error);
    absl::StatusOr<gpu::PinnedMemory<uint64_t>> pinned_error =
        gpu::NewPinnedMemory<uint64_t>(sizeof(uint64_t));
    if (!pinned_error.ok()) return pinned_error.status();
    slot.pinned_error = std::move(*pinned_error);
  }
  MutexLock lock(&tier->mu_);
  for (Slot& slot : tier->slots_) tier->free_slots_.push_back(&slot);
  return tier;
}

GpuTier::GpuTier(const Options& options, uint64_t limit)
    : options_(options), budget_(limit) {}

GpuTier::~GpuTier() {
  (void)gpu::SetDevice(options_.device);
  slots_.clear();
  MutexLock lock(&mu_);
  for (auto& [capacity, block] : pinned_cache_) {
    gpu::PinnedFree(block);
  }
}

absl::StatusOr<std::shared_ptr<const GpuLayerMirror>> GpuTier::Mirror(
    const Layer& layer) {
  const LayerLayout& layout = layer.layout();
  const uint64_t bytes = layout.total_bytes();
  if (!budget_.TryReserve(bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "layer ", layer.id(), " needs ", bytes, " bytes of GPU memory; ",
        budget_.limit() - std::min(budget_.limit(), budget_.used()), " of ",
        budget_.limit(), " free (--gpu_memory_limit_bytes)"));
  }
  std::shared_ptr<GpuLayerMirror> mirror(new GpuLayerMirror);
  mirror->reservation_ = MemoryReservation(&budget_, bytes);
  mirror->device_ = options_.device;
  if (absl::Status s = gpu::SetDevice(options_.device); !s.ok()) return s;
  std::vector<const uint8_t*> device_tables;
  // On an error return the mirror's destructor frees what was allocated.
  for (int h = 0; h < layout.num_heads(); ++h) {
    absl::StatusOr<gpu::DeviceMemory<>> table =
        gpu::NewDeviceMemory(layout.table_bytes(h));
    if (!table.ok()) return table.status();
    void* device_table = table->get();
    mirror->tables_.push_back(std::move(*table));
    device_tables.push_back(static_cast<const uint8_t*>(device_table));
    if (absl::Status s = gpu::CopyToDevice(device_table, layer.table(h),
                                           layout.table_bytes(h));
        !s.ok()) {
      return s;
    }
  }
  const size_t ptrs_bytes = device_tables.size() * sizeof(const uint8_t*);
  absl::StatusOr<gpu::DeviceMemory<const uint8_t*>> ptrs =
      gpu::NewDeviceMemory<const uint8_t*>(ptrs_bytes);
  if (!ptrs.ok()) return ptrs.status();
  mirror->table_ptrs_ = std::move(*ptrs);
  const size_t vocab_bytes = layout.num_heads() * sizeof(int64_t);
  absl::StatusOr<gpu::DeviceMemory<int64_t>> vocab =
      gpu::NewDeviceMemory<int64_t>(vocab_bytes);
  if (!vocab.ok()) return vocab.status();
  mirror->vocab_ = std::move(*vocab);
  if (absl::Status s = gpu::CopyToDevice(mirror->table_ptrs_.get(),
                                         device_tables.data(), ptrs_bytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = gpu::CopyToDevice(
          mirror->vocab_.get(), layout.table_vocab_sizes.data(), vocab_bytes);
      !s.ok()) {
    return s;
  }
  gpu::GatherLaunch& g = mirror->launch_;
  g.tables = mirror->table_ptrs_.get();
  g.vocab = mirror->vocab_.get();
  g.heads = layout.num_heads();
  g.dim = layout.embedding_dim;
  g.in_dtype = static_cast<int>(layout.dtype);
  return std::shared_ptr<const GpuLayerMirror>(std::move(mirror));
}

GpuTier::Slot* GpuTier::AcquireSlot() {
  MutexLock lock(&mu_);
  slot_free_.wait(lock, [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return !free_slots_.empty();
  });
  Slot* slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

void GpuTier::ReleaseSlot(Slot* slot) {
  {
    MutexLock lock(&mu_);
    free_slots_.push_back(slot);
  }
  slot_free_.notify_one();
}

absl::Status GpuTier::PrepareSlot(Slot* slot, size_t id_bytes,
                                  size_t out_bytes) {
  if (slot->ids_capacity < id_bytes) {
    const size_t capacity = RoundUpPow2(id_bytes);
    slot->device_ids.reset();
    slot->pinned_ids.reset();
    slot->ids_capacity = 0;
    absl::StatusOr<gpu::DeviceMemory<int64_t>> d =
        gpu::NewDeviceMemory<int64_t>(capacity);
    if (!d.ok()) return d.status();
    absl::StatusOr<gpu::PinnedMemory<int64_t>> p =
        gpu::NewPinnedMemory<int64_t>(capacity);
    if (!p.ok()) return p.status();
    slot->device_ids = std::move(*d);
    slot->pinned_ids = std::move(*p);
    slot->ids_capacity = capacity;
  }
  if (slot->out_capacity < out_bytes) {
    const size_t capacity = RoundUpPow2(out_bytes);
    slot->device_out.reset();
    slot->out_capacity = 0;
    absl::StatusOr<gpu::DeviceMemory<uint8_t>> d =
        gpu::NewDeviceMemory<uint8_t>(capacity);
    if (!d.ok()) return d.status();
    slot->device_out = std::move(*d);
    slot->out_capacity = capacity;
  }
  return absl::OkStatus();
}

absl::Status GpuTier::Gather(const GpuLayerMirror& mirror, const int64_t* ids,
                             int64_t num_ids, DType out_dtype,
                             uint8_t* host_out) {
  if (absl::Status s = gpu::SetDevice(options_.device); !s.ok()) return s;
  const size_t id_bytes = static_cast<size_t>(num_ids) * sizeof(int64_t);
  const size_t out_bytes =
      static_cast<size_t>(num_ids) * mirror.launch_.dim * DTypeSize(out_dtype);
  Slot* slot = AcquireSlot();
  absl::Status status = [&]() -> absl::Status {
    if (absl::Status s = PrepareSlot(slot, id_bytes, out_bytes); !s.ok())
      return s;
    const gpu::Stream stream = slot->stream.get();
    int64_t* const device_ids = slot->device_ids.get();
    uint8_t* const device_out = slot->device_out.get();
    uint64_t* const device_error = slot->device_error.get();
    uint64_t* const pinned_error = slot->pinned_error.get();
    std::memcpy(slot->pinned_ids.get(), ids, id_bytes);
    gpu::GatherLaunch g = mirror.launch_;
    g.out_dtype = static_cast<int>(out_dtype);
    g.ids = device_ids;
    g.num_ids = num_ids;
    g.out = device_out;
    g.error_flag = device_error;
    if (absl::Status s = gpu::CopyToDeviceAsync(
            device_ids, slot->pinned_ids.get(), id_bytes, stream);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::ResetErrorFlag(device_error, stream); !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::LaunchGather(g, stream); !s.ok()) return s;
    if (absl::Status s =
            gpu::CopyToHostAsync(host_out, device_out, out_bytes, stream);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::CopyToHostAsync(pinned_error, device_error,
                                              sizeof(uint64_t), stream);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::StreamSynchronize(stream); !s.ok()) return s;
    if (*pinned_error != gpu::kNoError) {
      return absl::InternalError(
          absl::StrCat("the device bounds check rejected row ", *pinned_error,
                       " of the gather"));
    }
    return absl::OkStatus();
  }();
  ReleaseSlot(slot);
  return status;
}

uint8_t* GpuTier::AllocResponse(size_t bytes, void** token) {
  const size_t capacity = PinnedCapacity(bytes + sizeof(PinnedBlock));
  {
    MutexLock lock(&mu_);
    auto it = pinned_cache_.lower_bound(capacity);
    if (it != pinned_cache_.end() && it->first <= capacity + capacity / 2) {
      PinnedBlock* block = it->second;
      pinned_cached_bytes_ -= block->capacity;
      pinned_cache_.erase(it);
      *token = block;
      return block->data;
    }
  }
  if (!gpu::SetDevice(options_.device).ok()) return nullptr;
  absl::StatusOr<void*> p = gpu::PinnedAlloc(capacity);
  if (!p.ok()) return nullptr;
  auto* block = static_cast<PinnedBlock*>(*p);
  block->owner = this;
  block->capacity = capacity;
  block->data = static_cast<uint8_t*>(*p) + sizeof(PinnedBlock);
  *token = block;
  return block->data;
}

void GpuTier::FreeResponse(void* token) {
  auto* block = static_cast<PinnedBlock*>(token);
  block->owner->ReturnPinned(block);
}

void GpuTier::ReturnPinned(PinnedBlock* block) {
  {
    MutexLock lock(&mu_);
    if (pinned_cached_bytes_ + block->capacity <= kMaxCachedPinnedBytes) {
      pinned_cached_bytes_ += block->capacity;
      pinned_cache_.emplace(block->capacity, block);
      return;
    }
  }
  gpu::PinnedFree(block);
}

}  // namespace engram
