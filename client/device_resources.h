// What device lookups (client/device_lookup.cc) hold per device: a scope
// that makes a device current, and pinned staging buffers reused once the
// GPU is done with them. Internal to engram::client_gpu.
#ifndef ENGRAM_CLIENT_DEVICE_RESOURCES_H_
#define ENGRAM_CLIENT_DEVICE_RESOURCES_H_

#include <cstddef>
#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "kernels/gpu.h"
#include "kernels/gpu_handles.h"

namespace engram {

// Makes `device` current for a scope, restoring the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    previous_ = gpu::CurrentDevice();
    if (previous_ != device_) status_ = gpu::SetDevice(device_);
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) {
      gpu::SetDevice(previous_).IgnoreError();
    }
  }
  const absl::Status& status() const { return status_; }

 private:
  const int device_;
  int previous_ = -1;
  absl::Status status_;
};

// Pinned host buffers for ids on their way to a kernel and for the RPC
// path's rows; a buffer is reused only once the event recorded after its
// last use has passed. Bound to one device (its events are). Thread-safe.
class PinnedPool {
 public:
  struct Block {
    gpu::PinnedMemory<> data;
    size_t capacity = 0;
    gpu::EventHandle event;
    bool busy = false;
  };
  absl::StatusOr<Block*> Acquire(size_t bytes) {
    MutexLock lock(&mu_);
    for (Block& b : blocks_) {
      if (!b.busy && b.capacity >= bytes && gpu::EventDone(b.event.get())) {
        b.busy = true;
        return &b;
      }
    }
    size_t capacity = 64 << 10;
    while (capacity < bytes) capacity *= 2;
    absl::StatusOr<gpu::PinnedMemory<>> data = gpu::NewPinnedMemory(capacity);
    if (!data.ok()) return data.status();
    absl::StatusOr<gpu::EventHandle> event = gpu::NewEvent();
    if (!event.ok()) return event.status();
    blocks_.push_back({std::move(*data), capacity, std::move(*event), true});
    return &blocks_.back();
  }
  // After the block's last use was enqueued on `stream`.
  void Release(Block* block, gpu::Stream stream) {
    // A failed record leaves the event as it was: at worst the block waits
    // for its previous use.
    gpu::EventRecord(block->event.get(), stream).IgnoreError();
    MutexLock lock(&mu_);
    block->busy = false;
  }
  // Unused after all (nothing was enqueued).
  void Return(Block* block) {
    MutexLock lock(&mu_);
    block->busy = false;
  }
  // Frees every block; none may be in use (the owner's device current).
  void Clear() {
    MutexLock lock(&mu_);
    blocks_.clear();
  }

 private:
  Mutex mu_;
  std::deque<Block> blocks_ ABSL_GUARDED_BY(mu_);  // stable addresses
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_RESOURCES_H_
