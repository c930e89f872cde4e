// CUDA implementation of kernels/gpu.h: runtime wrappers, views, IPC and
// registration (the gathers are in gather.cu).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_common.h"
#include "kernels/gpu.h"

namespace engram::gpu {
namespace {

using internal::Check;
using internal::DeviceView;
using internal::S;

__global__ void PublishViewKernel(unsigned long long* slot,
                                  unsigned long long view) {
  atomicExch(slot, view);
}

}  // namespace

bool Compiled() { return true; }

int DeviceCount(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why) {
      *why = err != cudaSuccess ? absl::StrCat("no usable CUDA device: ",
                                               cudaGetErrorString(err))
                                : "no CUDA device present";
    }
    cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  return count;
}

absl::Status SetDevice(int device) {
  return Check(cudaSetDevice(device), "cudaSetDevice");
}

std::string DeviceName(int device) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown";
  return absl::StrCat(p.name, " (sm_", p.major, p.minor, ", ",
                      p.multiProcessorCount, " SMs)");
}

absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) {
  return Check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

absl::StatusOr<void*> DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  if (absl::Status s = Check(cudaMalloc(&p, bytes), "cudaMalloc"); !s.ok()) {
    cudaGetLastError();
    return s;
  }
  return p;
}
void DeviceFree(void* ptr) {
  if (ptr) cudaFree(ptr);
}
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  return Check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice),
               "cudaMemcpy H2D");
}
absl::Status CopyToHost(void* dst, const void* src, size_t bytes) {
  return Check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost),
               "cudaMemcpy D2H");
}

absl::StatusOr<void*> PinnedAlloc(size_t bytes) {
  void* p = nullptr;
  if (absl::Status s = Check(cudaHostAlloc(&p, bytes, cudaHostAllocDefault),
                             "cudaHostAlloc");
      !s.ok()) {
    cudaGetLastError();
    return s;
  }
  return p;
}
void PinnedFree(void* ptr) {
  if (ptr) cudaFreeHost(ptr);
}
absl::Status HostRegister(void* ptr, size_t bytes) {
  absl::Status s = Check(cudaHostRegister(ptr, bytes, cudaHostRegisterDefault),
                         "cudaHostRegister");
  if (!s.ok()) cudaGetLastError();
  return s;
}
void HostUnregister(void* ptr) {
  if (ptr) cudaHostUnregister(ptr);
}

absl::StatusOr<Stream> StreamCreate() {
  cudaStream_t s;
  if (absl::Status st =
          Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                "cudaStreamCreate");
      !st.ok()) {
    return st;
  }
  return static_cast<Stream>(s);
}
void StreamDestroy(Stream stream) {
  if (stream) cudaStreamDestroy(S(stream));
}
absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes,
                               Stream stream) {
  return Check(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, S(stream)),
      "cudaMemcpyAsync H2D");
}
absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes,
                             Stream stream) {
  return Check(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, S(stream)),
      "cudaMemcpyAsync D2H");
}
absl::Status StreamSynchronize(Stream stream) {
  return Check(cudaStreamSynchronize(S(stream)), "cudaStreamSynchronize");
}

absl::Status DeviceSynchronize() {
  return Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::Status LaunchDeviceCopy(void* dst, const void* src, size_t bytes,
                              Stream stream) {
  return Check(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, S(stream)),
      "cudaMemcpyAsync D2D");
}

int CurrentDevice() {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return device;
}

absl::StatusOr<std::string> DeviceUuid(int device) {
  cudaDeviceProp p;
  if (absl::Status s =
          Check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
      !s.ok()) {
    cudaGetLastError();
    return s;
  }
  return std::string(p.uuid.bytes, sizeof(p.uuid.bytes));
}

absl::StatusOr<int> DeviceWithUuid(const std::string& uuid) {
  const int count = DeviceCount(nullptr);
  for (int d = 0; d < count; ++d) {
    absl::StatusOr<std::string> u = DeviceUuid(d);
    if (u.ok() && *u == uuid) return d;
  }
  return absl::NotFoundError("no device of this process has that UUID");
}

absl::StatusOr<std::string> IpcHandleOf(int device, void* device_ptr) {
  if (absl::Status s = SetDevice(device); !s.ok()) return s;
  cudaIpcMemHandle_t handle;
  if (absl::Status s = Check(cudaIpcGetMemHandle(&handle, device_ptr),
                             "cudaIpcGetMemHandle");
      !s.ok()) {
    cudaGetLastError();
    return s;
  }
  return std::string(handle.reserved, sizeof(handle.reserved));
}

absl::StatusOr<void*> IpcOpen(const std::string& handle) {
  cudaIpcMemHandle_t h;
  if (handle.size() != sizeof(h.reserved)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a CUDA IPC handle has ", sizeof(h.reserved),
                     " bytes, not ", handle.size()));
  }
  std::memcpy(h.reserved, handle.data(), sizeof(h.reserved));
  void* p = nullptr;
  if (absl::Status s =
          Check(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
                "cudaIpcOpenMemHandle");
      !s.ok()) {
    cudaGetLastError();
    return absl::FailedPreconditionError(s.message());
  }
  return p;
}

void IpcClose(void* ptr) {
  if (ptr) cudaIpcCloseMemHandle(ptr);
}

absl::StatusOr<const void*> HostRegisterMapped(const void* ptr, size_t bytes,
                                               bool read_only) {
  unsigned flags = cudaHostRegisterMapped | cudaHostRegisterPortable;
  if (read_only) {
    int supported = 0;
    cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterReadOnlySupported,
                           CurrentDevice());
    if (!supported) {
      cudaGetLastError();
      return absl::FailedPreconditionError(
          "this platform cannot register read-only host memory with CUDA "
          "(cudaDevAttrHostRegisterReadOnlySupported is 0)");
    }
    flags |= cudaHostRegisterReadOnly;
  }
  void* p = const_cast<void*>(ptr);
  if (absl::Status s =
          Check(cudaHostRegister(p, bytes, flags), "cudaHostRegister");
      !s.ok()) {
    cudaGetLastError();
    return s;
  }
  void* device_ptr = nullptr;
  if (absl::Status s = Check(cudaHostGetDevicePointer(&device_ptr, p, 0),
                             "cudaHostGetDevicePointer");
      !s.ok()) {
    cudaHostUnregister(p);
    cudaGetLastError();
    return s;
  }
  return static_cast<const void*>(device_ptr);
}

void HostUnregisterConst(const void* ptr) {
  if (ptr) cudaHostUnregister(const_cast<void*>(ptr));
}

PointerInfo DescribePointer(const void* ptr) {
  PointerInfo info;
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) {
    cudaGetLastError();
    return info;
  }
  if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) {
    info.device_memory = true;
    info.device = a.device;
  } else if (a.type == cudaMemoryTypeHost) {
    info.host_mapped = true;
    info.device = a.device;
  }
  return info;
}

bool StreamCapturing(Stream stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(S(stream), &status) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return status != cudaStreamCaptureStatusNone;
}

absl::StatusOr<Event> EventCreate() {
  cudaEvent_t e;
  if (absl::Status s =
          Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                "cudaEventCreate");
      !s.ok()) {
    return s;
  }
  return static_cast<Event>(e);
}
void EventDestroy(Event event) {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
absl::Status EventRecord(Event event, Stream stream) {
  return Check(cudaEventRecord(static_cast<cudaEvent_t>(event), S(stream)),
               "cudaEventRecord");
}
bool EventDone(Event event) {
  const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (err == cudaErrorNotReady) return false;
  if (err != cudaSuccess) cudaGetLastError();
  return true;
}

absl::StatusOr<void*> CreateView(const ViewSpec& spec, Stream stream) {
  if (spec.heads < 0 || spec.heads > kMaxViewHeads ||
      (spec.state == kViewPresent &&
       (static_cast<int>(spec.tables.size()) != spec.heads ||
        static_cast<int>(spec.vocab.size()) != spec.heads ||
        (!spec.epoch_slots.empty() &&
         (static_cast<int>(spec.epoch_slots.size()) != spec.heads ||
          spec.generations.size() != spec.epoch_slots.size()))))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a view holds 0 to ", kMaxViewHeads, " heads with one table each"));
  }
  DeviceView v;
  std::memset(&v, 0, sizeof(v));
  v.state = spec.state;
  v.heads = spec.heads;
  v.dim = spec.dim;
  v.dtype = internal::ViewDType(spec.dtype, spec.quant_block);
  v.version = spec.version;
  v.token_model = spec.token_model;
  v.offsets[0] = 0;
  for (size_t h = 0; h < spec.tables.size(); ++h) {
    v.tables[h] = spec.tables[h];
    v.vocab[h] = spec.vocab[h];
    v.offsets[h + 1] = v.offsets[h] + spec.vocab[h];
  }
  for (size_t h = 0; h < spec.epoch_slots.size(); ++h) {
    v.epoch_slots[h] = spec.epoch_slots[h];
    v.generations[h] = spec.generations[h];
  }
  absl::StatusOr<void*> d = DeviceAlloc(sizeof(v));
  if (!d.ok()) return d.status();
  absl::Status s = CopyToDeviceAsync(*d, &v, sizeof(v), stream);
  if (s.ok()) s = StreamSynchronize(stream);
  if (!s.ok()) {
    DeviceFree(*d);
    return s;
  }
  return *d;
}
void FreeView(void* view) { DeviceFree(view); }

absl::StatusOr<void*> CreateViewSlot() {
  absl::StatusOr<void*> d = DeviceAlloc(sizeof(uint64_t));
  if (!d.ok()) return d.status();
  const uint64_t null_view = 0;
  if (absl::Status s = CopyToDevice(*d, &null_view, sizeof(null_view));
      !s.ok()) {
    DeviceFree(*d);
    return s;
  }
  return *d;
}
void FreeViewSlot(void* slot) { DeviceFree(slot); }

absl::Status PublishView(void* slot, void* view, Stream stream) {
  PublishViewKernel<<<1, 1, 0, S(stream)>>>(
      static_cast<unsigned long long*>(slot),
      reinterpret_cast<unsigned long long>(view));
  if (absl::Status s = Check(cudaGetLastError(), "view publish launch");
      !s.ok()) {
    return s;
  }
  return StreamSynchronize(stream);
}

absl::Status BeginCapture(Stream stream) {
  return Check(
      cudaStreamBeginCapture(S(stream), cudaStreamCaptureModeThreadLocal),
      "cudaStreamBeginCapture");
}

absl::StatusOr<GraphExec> EndCapture(Stream stream) {
  cudaGraph_t graph = nullptr;
  if (absl::Status s = Check(cudaStreamEndCapture(S(stream), &graph),
                             "cudaStreamEndCapture");
      !s.ok()) {
    cudaGetLastError();
    return s;
  }
  cudaGraphExec_t exec = nullptr;
  absl::Status s =
      Check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cudaGraphDestroy(graph);
  if (!s.ok()) return s;
  return static_cast<GraphExec>(exec);
}

absl::Status GraphLaunch(GraphExec graph, Stream stream) {
  return Check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), S(stream)),
               "cudaGraphLaunch");
}

void GraphDestroy(GraphExec graph) {
  if (graph) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph));
}

absl::StatusOr<float> TimeOnStream(Stream stream, int iterations,
                                   absl::Status (*fn)(void*), void* arg) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, S(stream));
  absl::Status status;
  for (int i = 0; i < iterations && status.ok(); ++i) status = fn(arg);
  cudaEventRecord(stop, S(stream));
  if (status.ok())
    status = Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!status.ok()) return status;
  return ms;
}

}  // namespace engram::gpu
