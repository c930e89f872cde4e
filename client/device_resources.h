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
  explicit DeviceGuard(int device);
  ~DeviceGuard();
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
  // A free block of at least `bytes` whose last use has passed, or a new
  // one.
  absl::StatusOr<Block*> Acquire(size_t bytes);
  // After the block's last use was enqueued on `stream`.
  void Release(Block* block, gpu::Stream stream);
  // Unused after all (nothing was enqueued).
  void Return(Block* block);
  // Frees every block; none may be in use (the owner's device current).
  void Clear();

 private:
  Mutex mu_;
  std::deque<Block> blocks_ ABSL_GUARDED_BY(mu_);  // stable addresses
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_DEVICE_RESOURCES_H_
