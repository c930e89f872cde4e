#include "client/device_resources.h"

#include <utility>

namespace engram {

DeviceGuard::DeviceGuard(int device) : device_(device) {
  previous_ = gpu::CurrentDevice();
  if (previous_ != device_) status_ = gpu::SetDevice(device_);
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) {
    gpu::SetDevice(previous_).IgnoreError();
  }
}

absl::StatusOr<PinnedPool::Block*> PinnedPool::Acquire(size_t bytes) {
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

void PinnedPool::Release(Block* block, gpu::Stream stream) {
  // A failed record leaves the event as it was: at worst the block waits
  // for its previous use.
  gpu::EventRecord(block->event.get(), stream).IgnoreError();
  MutexLock lock(&mu_);
  block->busy = false;
}

void PinnedPool::Return(Block* block) {
  MutexLock lock(&mu_);
  block->busy = false;
}

void PinnedPool::Clear() {
  MutexLock lock(&mu_);
  blocks_.clear();
}

}  // namespace engram
