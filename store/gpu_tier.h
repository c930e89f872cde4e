// The GPU tier: device-memory mirrors of committed layers and the lookup
// path that gathers from them. The host copy stays the source of truth.
#ifndef ENGRAM_STORE_GPU_TIER_H_
#define ENGRAM_STORE_GPU_TIER_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "kernels/gpu.h"
#include "kernels/gpu_handles.h"
#include "store/host_memory.h"
#include "store/layer.h"

namespace engram {

// Device copies of one layer's tables plus the device arrays a gather
// launch needs. Immutable; frees its device memory and GPU budget charge
// when the last holder (the Layer) drops it.
class GpuLayerMirror {
 public:
  ~GpuLayerMirror();
  GpuLayerMirror(const GpuLayerMirror&) = delete;
  GpuLayerMirror& operator=(const GpuLayerMirror&) = delete;

  uint64_t bytes() const { return reservation_.bytes(); }
  // The CUDA device holding the copy, and head h's table there (its own
  // cudaMalloc allocation: what a CUDA IPC handle of it opens).
  int device() const { return device_; }
  void* device_table(int head) const { return tables_[head].get(); }
  int num_tables() const { return static_cast<int>(tables_.size()); }

 private:
  friend class GpuTier;
  GpuLayerMirror() = default;
  int device_ = 0;
  std::vector<gpu::DeviceMemory<>> tables_;
  gpu::DeviceMemory<const uint8_t*> table_ptrs_;  // the tables' addresses
  gpu::DeviceMemory<int64_t> vocab_;              // N_h
  gpu::GatherLaunch launch_;  // filled except ids / num_ids / out / flag
  MemoryReservation reservation_;
};

// Owns the device context, a small pool of streams with their device and
// pinned staging buffers, and a cache of pinned response buffers.
// Thread-safe; Gather blocks its caller (a worker thread, never a gRPC
// reactor) until the rows are in host memory.
class GpuTier {
 public:
  struct Options {
    int device = 0;
    uint64_t memory_limit_bytes = 0;  // 0: 90% of the device's free memory
    int streams = 4;
  };
  // UNAVAILABLE with the reason when there is no usable device.
  static absl::StatusOr<std::unique_ptr<GpuTier>> Open(const Options& options);
  ~GpuTier();

  // Copies `layer`'s tables to the device. RESOURCE_EXHAUSTED past the GPU
  // budget; nothing stays allocated on failure.
  absl::StatusOr<std::shared_ptr<const GpuLayerMirror>> Mirror(
      const Layer& layer);

  // Gathers `num_ids` rows (ids already validated) into `host_out`, which
  // should come from AllocResponse (pinned: the copy back runs at full
  // PCIe speed). On error nothing is promised about `host_out`.
  absl::Status Gather(const GpuLayerMirror& mirror, const int64_t* ids,
                      int64_t num_ids, DType out_dtype, uint8_t* host_out);

  // Pinned host memory for a response of `bytes`, or nullptr. Return it
  // with FreeResponse(token) — `token` is what the function stored in
  // *token; freeing may happen on any thread.
  uint8_t* AllocResponse(size_t bytes, void** token);
  static void FreeResponse(void* token);

  int device() const { return options_.device; }
  const std::string& device_name() const { return device_name_; }
  const MemoryBudget& budget() const { return budget_; }

 private:
  // One stream and its staging buffers; freed by ~GpuTier with the
  // device current.
  struct Slot {
    gpu::StreamHandle stream;
    gpu::DeviceMemory<int64_t> device_ids;
    gpu::PinnedMemory<int64_t> pinned_ids;
    size_t ids_capacity = 0;
    gpu::DeviceMemory<uint8_t> device_out;
    size_t out_capacity = 0;
    gpu::DeviceMemory<uint64_t> device_error;
    gpu::PinnedMemory<uint64_t> pinned_error;
  };
  struct PinnedBlock;

  GpuTier(const Options& options, uint64_t limit);
  absl::Status PrepareSlot(Slot* slot, size_t id_bytes, size_t out_bytes);
  Slot* AcquireSlot();
  void ReleaseSlot(Slot* slot);
  void ReturnPinned(PinnedBlock* block);

  const Options options_;
  std::string device_name_;
  MemoryBudget budget_;
  std::vector<Slot> slots_;

  Mutex mu_;  // common/mutex.h: checked by clang, seen by TSan
  std::condition_variable_any slot_free_;
  std::vector<Slot*> free_slots_ ABSL_GUARDED_BY(mu_);
  // Cached pinned blocks by capacity; bounded by kMaxCachedPinnedBytes.
  std::multimap<size_t, PinnedBlock*> pinned_cache_ ABSL_GUARDED_BY(mu_);
  size_t pinned_cached_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram

#endif  // ENGRAM_STORE_GPU_TIER_H_
