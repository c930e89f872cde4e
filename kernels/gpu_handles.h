// Owning handles for what kernels/gpu.h hands out: device and pinned
// memory, streams, events, views, view slots and CUDA IPC mappings. Each is
// a std::unique_ptr whose deleter is the matching gpu:: free call, so a
// resource is freed exactly once, on every path, and moves but never
// copies. As with the plain calls, whoever destroys or resets a handle makes
// its device current first (the destructor of a class holding them usually
// resets them explicitly under a DeviceGuard).
#ifndef ENGRAM_KERNELS_GPU_HANDLES_H_
#define ENGRAM_KERNELS_GPU_HANDLES_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/gpu.h"

namespace engram::gpu {

// The deleter of a handle: calls `Free` on the pointer it owns (never on
// null: std::unique_ptr skips the call).
template <auto Free>
struct FreeWith {
  template <typename T>
  void operator()(T* p) const {
    Free(const_cast<void*>(static_cast<const void*>(p)));
  }
};

template <typename T = void>
using DeviceMemory = std::unique_ptr<T, FreeWith<&DeviceFree>>;
template <typename T = void>
using PinnedMemory = std::unique_ptr<T, FreeWith<&PinnedFree>>;
using StreamHandle = std::unique_ptr<void, FreeWith<&StreamDestroy>>;
using EventHandle = std::unique_ptr<void, FreeWith<&EventDestroy>>;
using ViewHandle = std::unique_ptr<void, FreeWith<&FreeView>>;
using ViewSlotHandle = std::unique_ptr<void, FreeWith<&FreeViewSlot>>;
using IpcMapping = std::unique_ptr<void, FreeWith<&IpcClose>>;
// Host memory registered with HostRegisterMapped (owns the registration,
// not the memory).
using HostRegistration =
    std::unique_ptr<const void, FreeWith<&HostUnregisterConst>>;

// Wraps what an allocating gpu:: call returned; its error passes through.
template <typename Handle, typename Raw>
absl::StatusOr<Handle> Own(absl::StatusOr<Raw> raw) {
  if (!raw.ok()) return raw.status();
  return Handle(static_cast<typename Handle::pointer>(*raw));
}

// `bytes` of device memory on the current device, as T.
template <typename T = void>
absl::StatusOr<DeviceMemory<T>> NewDeviceMemory(size_t bytes) {
  return Own<DeviceMemory<T>>(DeviceAlloc(bytes));
}
// `bytes` of page-locked host memory, as T.
template <typename T = void>
absl::StatusOr<PinnedMemory<T>> NewPinnedMemory(size_t bytes) {
  return Own<PinnedMemory<T>>(PinnedAlloc(bytes));
}
inline absl::StatusOr<StreamHandle> NewStream() {
  return Own<StreamHandle>(StreamCreate());
}
inline absl::StatusOr<EventHandle> NewEvent() {
  return Own<EventHandle>(EventCreate());
}
inline absl::StatusOr<ViewHandle> NewView(const ViewSpec& spec, Stream stream) {
  return Own<ViewHandle>(CreateView(spec, stream));
}
inline absl::StatusOr<ViewSlotHandle> NewViewSlot() {
  return Own<ViewSlotHandle>(CreateViewSlot());
}
inline absl::StatusOr<IpcMapping> OpenIpc(const std::string& handle) {
  return Own<IpcMapping>(IpcOpen(handle));
}

}  // namespace engram::gpu

#endif  // ENGRAM_KERNELS_GPU_HANDLES_H_
