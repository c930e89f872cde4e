// The GPU API for builds without CUDA: nothing is available.
#include "kernels/gpu.h"

namespace engram::gpu {
namespace {
absl::Status NotBuilt() {
  return absl::UnavailableError(
      "this build has no CUDA support (configure with ENGRAM_WITH_CUDA=ON "
      "on a machine with nvcc)");
}
}  // namespace

bool Compiled() { return false; }
int DeviceCount(std::string* why) {
  if (why) *why = "built without CUDA";
  return 0;
}
absl::Status SetDevice(int) { return NotBuilt(); }
std::string DeviceName(int) { return "none"; }
absl::Status MemoryInfo(size_t*, size_t*) { return NotBuilt(); }
absl::StatusOr<void*> DeviceAlloc(size_t) { return NotBuilt(); }
void DeviceFree(void*) {}
absl::Status CopyToDevice(void*, const void*, size_t) { return NotBuilt(); }
absl::Status CopyToHost(void*, const void*, size_t) { return NotBuilt(); }
absl::StatusOr<void*> PinnedAlloc(size_t) { return NotBuilt(); }
void PinnedFree(void*) {}
absl::Status HostRegister(void*, size_t) { return NotBuilt(); }
void HostUnregister(void*) {}
absl::StatusOr<Stream> StreamCreate() { return NotBuilt(); }
void StreamDestroy(Stream) {}
absl::Status CopyToDeviceAsync(void*, const void*, size_t, Stream) {
  return NotBuilt();
}
absl::Status CopyToHostAsync(void*, const void*, size_t, Stream) {
  return NotBuilt();
}
absl::Status StreamSynchronize(Stream) { return NotBuilt(); }
absl::Status DeviceSynchronize() { return NotBuilt(); }
absl::Status ResetErrorFlag(uint64_t*, Stream) { return NotBuilt(); }
absl::Status LaunchGather(const GatherLaunch&, Stream) { return NotBuilt(); }
absl::Status LaunchDeviceCopy(void*, const void*, size_t, Stream) {
  return NotBuilt();
}
int CurrentDevice() { return -1; }
absl::StatusOr<std::string> DeviceUuid(int) { return NotBuilt(); }
absl::StatusOr<int> DeviceWithUuid(const std::string&) { return NotBuilt(); }
absl::StatusOr<std::string> IpcHandleOf(int, void*) { return NotBuilt(); }
absl::StatusOr<void*> IpcOpen(const std::string&) { return NotBuilt(); }
void IpcClose(void*) {}
absl::StatusOr<const void*> HostRegisterMapped(const void*, size_t, bool) {
  return NotBuilt();
}
void HostUnregisterConst(const void*) {}
PointerInfo DescribePointer(const void*) { return {}; }
bool StreamCapturing(Stream) { return false; }
absl::StatusOr<Event> EventCreate() { return NotBuilt(); }
void EventDestroy(Event) {}
absl::Status EventRecord(Event, Stream) { return NotBuilt(); }
bool EventDone(Event) { return true; }
absl::StatusOr<void*> CreateView(const ViewSpec&, Stream) { return NotBuilt(); }
void FreeView(void*) {}
absl::StatusOr<void*> CreateViewSlot() { return NotBuilt(); }
void FreeViewSlot(void*) {}
absl::Status PublishView(void*, void*, Stream) { return NotBuilt(); }
absl::Status LaunchViewGathers(const ViewGather*, size_t, Stream) {
  return NotBuilt();
}
absl::Status LaunchViewGather(const ViewGather&, Stream) { return NotBuilt(); }
bool CanDequantizeBlock(int) { return false; }
absl::Status BeginCapture(Stream) { return NotBuilt(); }
absl::StatusOr<GraphExec> EndCapture(Stream) { return NotBuilt(); }
absl::Status GraphLaunch(GraphExec, Stream) { return NotBuilt(); }
void GraphDestroy(GraphExec) {}
absl::StatusOr<float> TimeOnStream(Stream, int, absl::Status (*)(void*),
                                   void*) {
  return NotBuilt();
}

}  // namespace engram::gpu
