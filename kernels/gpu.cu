// CUDA implementation of kernels/gpu.h: runtime wrappers and the row gather.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/float_convert.h"
#include "kernels/gpu.h"

namespace engram::gpu {
namespace {

absl::Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = err == cudaErrorMemoryAllocation
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, ": ", cudaGetErrorName(err),
                                         " (", cudaGetErrorString(err), ")"));
}

cudaStream_t S(Stream s) { return static_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;

int GridFor(uint64_t work) {
  static int max_blocks = [] {
    int device = 0, sms = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return std::max(1, sms) * 16;  // enough resident warps to hide latency
  }();
  const uint64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<uint64_t>(blocks, max_blocks));
}

// A ViewSpec as kernels read it (gpu.h). Plain data in device memory.
struct DeviceView {
  uint32_t state;
  int32_t heads;
  int64_t dim;
  int32_t dtype;
  int32_t unused;
  uint64_t version;
  const uint8_t* tables[kMaxViewHeads];
  int64_t vocab[kMaxViewHeads];
  const uint64_t* epoch_slots[kMaxViewHeads];
  uint64_t generations[kMaxViewHeads];
};

// Where a gather's tables come from: fixed device arrays (the server's GPU
// tier), or the view a launch pinned into status[1] (zero-copy lookups).
// With a view whose state or layout is not the one the launch was sized
// for, the kernel reads nothing (the check kernel reports why).
struct TableSource {
  const uint8_t* const* tables;
  const int64_t* vocab;
  const unsigned long long* view_status;  // non-null: use its view
  int64_t expect_dim;
  int expect_dtype;

  __device__ __forceinline__ bool Resolve(int heads, const uint8_t* const** t,
                                          const int64_t** v) const {
    if (view_status == nullptr) {
      *t = tables;
      *v = vocab;
      return true;
    }
    const auto* view = reinterpret_cast<const DeviceView*>(view_status[1]);
    if (view == nullptr || view->state != kViewPresent ||
        view->heads != heads || view->dim != expect_dim ||
        view->dtype != expect_dtype) {
      return false;
    }
    *t = view->tables;
    *v = view->vocab;
    return true;
  }
};

// Same-dtype gather: each thread moves one V-sized piece of one row, so a
// warp reads whole rows with wide, coalesced accesses. Index is 32-bit when
// the piece count allows (cheaper division).
template <typename V, typename Index>
__global__ void CopyRowsKernel(TableSource source, int heads,
                               Index pieces_per_row, Index total,
                               const int64_t* __restrict__ ids,
                               uint8_t* __restrict__ out,
                               unsigned long long* __restrict__ error) {
  const uint8_t* const* tables;
  const int64_t* vocab;
  if (!source.Resolve(heads, &tables, &vocab)) return;
  const size_t row_bytes = static_cast<size_t>(pieces_per_row) * sizeof(V);
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index t = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < total; t += stride) {
    const Index row = t / pieces_per_row;
    const Index piece = t - row * pieces_per_row;
    const int h = static_cast<int>(row % heads);
    const int64_t id = __ldg(ids + row);
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(__ldg(vocab + h))) {
      if (piece == 0) atomicMin(error, static_cast<unsigned long long>(row));
      continue;  // never read outside the table
    }
    const V* src =
        reinterpret_cast<const V*>(tables[h] + id * row_bytes) + piece;
    V* dst = reinterpret_cast<V*>(out + static_cast<size_t>(row) * row_bytes) +
             piece;
    *dst = __ldg(src);
  }
}

template <int kDType>
__device__ __forceinline__ float LoadAsFloat(const uint8_t* row, int64_t e) {
  if constexpr (kDType == 1) {
    return __ldg(reinterpret_cast<const float*>(row) + e);
  } else if constexpr (kDType == 2) {
    return convert::BFloat16ToFloat(
        __ldg(reinterpret_cast<const uint16_t*>(row) + e));
  } else {
    return convert::Float16ToFloat(
        __ldg(reinterpret_cast<const uint16_t*>(row) + e));
  }
}

template <int kDType>
__device__ __forceinline__ void StoreFromFloat(uint8_t* row, int64_t e,
                                               float v) {
  if constexpr (kDType == 1) {
    reinterpret_cast<float*>(row)[e] = v;
  } else if constexpr (kDType == 2) {
    reinterpret_cast<uint16_t*>(row)[e] = convert::FloatToBFloat16(v);
  } else {
    reinterpret_cast<uint16_t*>(row)[e] = convert::FloatToFloat16(v);
  }
}

constexpr int Size(int dtype) { return dtype == 1 ? 4 : 2; }

// Converting gather: one element per thread, through float, with the same
// rounding as the CPU path (kernels/float_convert.h).
template <int kIn, int kOut, typename Index>
__global__ void ConvertRowsKernel(TableSource source, int heads, Index dim,
                                  Index total, const int64_t* __restrict__ ids,
                                  uint8_t* __restrict__ out,
                                  unsigned long long* __restrict__ error) {
  const uint8_t* const* tables;
  const int64_t* vocab;
  if (!source.Resolve(heads, &tables, &vocab)) return;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index t = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < total; t += stride) {
    const Index row = t / dim;
    const Index e = t - row * dim;
    const int h = static_cast<int>(row % heads);
    const int64_t id = __ldg(ids + row);
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(__ldg(vocab + h))) {
      if (e == 0) atomicMin(error, static_cast<unsigned long long>(row));
      continue;
    }
    const float v = LoadAsFloat<kIn>(tables[h] + id * dim * Size(kIn), e);
    StoreFromFloat<kOut>(out + static_cast<size_t>(row) * dim * Size(kOut), e,
                         v);
  }
}

// One gather as the launchers below take it: GatherLaunch plus, for
// zero-copy lookups, the status words whose view supplies the tables.
struct Gather {
  GatherLaunch g;
  const unsigned long long* view_status = nullptr;

  TableSource Source() const {
    return {g.tables, g.vocab, view_status, g.dim, g.in_dtype};
  }
};

template <typename V, typename Index>
void LaunchCopy(const Gather& x, size_t row_bytes, Stream stream) {
  const GatherLaunch& g = x.g;
  const Index pieces = static_cast<Index>(row_bytes / sizeof(V));
  const Index total = static_cast<Index>(g.num_ids) * pieces;
  CopyRowsKernel<V, Index><<<GridFor(total), kThreads, 0, S(stream)>>>(
      x.Source(), g.heads, pieces, total, g.ids, g.out,
      reinterpret_cast<unsigned long long*>(g.error_flag));
}

template <typename Index>
void DispatchCopy(const Gather& g, size_t row_bytes, Stream stream) {
  // Widest access that divides the row (bases are >= 256-byte aligned).
  if (row_bytes % 16 == 0)
    return LaunchCopy<uint4, Index>(g, row_bytes, stream);
  if (row_bytes % 8 == 0) return LaunchCopy<uint2, Index>(g, row_bytes, stream);
  if (row_bytes % 4 == 0)
    return LaunchCopy<uint32_t, Index>(g, row_bytes, stream);
  if (row_bytes % 2 == 0)
    return LaunchCopy<uint16_t, Index>(g, row_bytes, stream);
  LaunchCopy<uint8_t, Index>(g, row_bytes, stream);
}

template <int kIn, int kOut, typename Index>
void LaunchConvert(const Gather& x, Stream stream) {
  const GatherLaunch& g = x.g;
  const Index total = static_cast<Index>(g.num_ids * g.dim);
  ConvertRowsKernel<kIn, kOut, Index>
      <<<GridFor(total), kThreads, 0, S(stream)>>>(
          x.Source(), g.heads, static_cast<Index>(g.dim), total, g.ids, g.out,
          reinterpret_cast<unsigned long long*>(g.error_flag));
}

template <typename Index>
bool DispatchConvert(const Gather& x, Stream stream) {
  const GatherLaunch& g = x.g;
  const int pair = g.in_dtype * 10 + g.out_dtype;
  switch (pair) {
    case 12:
      LaunchConvert<1, 2, Index>(x, stream);
      return true;
    case 13:
      LaunchConvert<1, 3, Index>(x, stream);
      return true;
    case 21:
      LaunchConvert<2, 1, Index>(x, stream);
      return true;
    case 23:
      LaunchConvert<2, 3, Index>(x, stream);
      return true;
    case 31:
      LaunchConvert<3, 1, Index>(x, stream);
      return true;
    case 32:
      LaunchConvert<3, 2, Index>(x, stream);
      return true;
    default:
      return false;
  }
}

// Pins the slot's current view for one launch: every row of the launch
// comes from that one version, even if the slot moves meanwhile.
__global__ void BeginViewKernel(unsigned long long* slot,
                                unsigned long long* status) {
  status[1] = atomicAdd(slot, 0ull);  // an atomic read of the slot
  status[0] = kStatusOk;
}

// After the gather (stream order): why the view was not read, or whether
// one of the ranges it read was released meanwhile (a tripwire: the server
// keeps leased versions alive).
__global__ void CheckViewKernel(int heads, int64_t dim, int dtype,
                                unsigned long long* status) {
  const auto* view = reinterpret_cast<const DeviceView*>(status[1]);
  __shared__ int released;
  if (threadIdx.x == 0) released = 0;
  __syncthreads();
  if (view == nullptr || view->state != kViewPresent) {
    if (threadIdx.x == 0) {
      status[0] = view != nullptr && view->state == kViewRemoved
                      ? kStatusRemoved
                      : kStatusUnavailable;
    }
    return;
  }
  if (view->heads != heads || view->dim != dim || view->dtype != dtype) {
    if (threadIdx.x == 0) status[0] = kStatusLayoutChanged;
    return;
  }
  for (int h = threadIdx.x; h < heads; h += blockDim.x) {
    const uint64_t* slot = view->epoch_slots[h];
    if (slot != nullptr && *reinterpret_cast<const volatile uint64_t*>(slot) !=
                               view->generations[h]) {
      released = 1;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0 && released) status[0] = kStatusReleased;
}

__global__ void PublishViewKernel(unsigned long long* slot,
                                  unsigned long long view) {
  atomicExch(slot, view);
}

size_t DTypeBytes(int dtype) {
  switch (dtype) {
    case 1:
      return 4;
    case 2:
    case 3:
      return 2;
    case 4:
      return 1;
    default:
      return 0;
  }
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

absl::Status ResetErrorFlag(uint64_t* error_flag, Stream stream) {
  return Check(cudaMemsetAsync(error_flag, 0xff, sizeof(uint64_t), S(stream)),
               "cudaMemsetAsync");
}

static absl::Status LaunchGatherFrom(const Gather& x, Stream stream) {
  const GatherLaunch& g = x.g;
  const size_t in_size = DTypeBytes(g.in_dtype),
               out_size = DTypeBytes(g.out_dtype);
  if (in_size == 0 || out_size == 0 || g.heads <= 0 || g.dim <= 0) {
    return absl::InvalidArgumentError("bad gather launch arguments");
  }
  if (g.num_ids == 0) return absl::OkStatus();
  const size_t row_bytes = g.dim * in_size;
  const uint64_t work =
      static_cast<uint64_t>(g.num_ids) * row_bytes;  // upper bound
  const bool small_index = work < (uint64_t{1} << 31);
  if (g.in_dtype == g.out_dtype) {
    if (small_index) {
      DispatchCopy<uint32_t>(x, row_bytes, stream);
    } else {
      DispatchCopy<uint64_t>(x, row_bytes, stream);
    }
  } else {
    const bool ok = small_index ? DispatchConvert<uint32_t>(x, stream)
                                : DispatchConvert<uint64_t>(x, stream);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "no conversion from dtype ", g.in_dtype, " to ", g.out_dtype));
    }
  }
  return Check(cudaGetLastError(), "gather kernel launch");
}

absl::Status LaunchGather(const GatherLaunch& g, Stream stream) {
  return LaunchGatherFrom(Gather{g, nullptr}, stream);
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
    cudaDeviceGetAttribute(&supported,
                           cudaDevAttrHostRegisterReadOnlySupported,
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
  v.dtype = spec.dtype;
  v.version = spec.version;
  for (size_t h = 0; h < spec.tables.size(); ++h) {
    v.tables[h] = spec.tables[h];
    v.vocab[h] = spec.vocab[h];
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

absl::Status LaunchViewGather(const ViewGather& v, Stream stream) {
  if (v.slot == nullptr || v.status == nullptr || v.heads <= 0 ||
      v.heads > kMaxViewHeads || v.dim <= 0 || v.num_ids < 0 ||
      v.num_ids % v.heads != 0) {
    return absl::InvalidArgumentError("bad view gather arguments");
  }
  auto* status = reinterpret_cast<unsigned long long*>(v.status);
  BeginViewKernel<<<1, 1, 0, S(stream)>>>(
      static_cast<unsigned long long*>(const_cast<void*>(v.slot)), status);
  if (absl::Status s = Check(cudaGetLastError(), "view begin launch");
      !s.ok()) {
    return s;
  }
  Gather x;
  x.g.heads = v.heads;
  x.g.dim = v.dim;
  x.g.in_dtype = v.in_dtype;
  x.g.out_dtype = v.out_dtype;
  x.g.ids = v.ids;
  x.g.num_ids = v.num_ids;
  x.g.out = v.out;
  x.g.error_flag = v.status;  // word 0: atomicMin of failing rows
  x.view_status = status;
  if (absl::Status s = LaunchGatherFrom(x, stream); !s.ok()) return s;
  CheckViewKernel<<<1, kThreads, 0, S(stream)>>>(v.heads, v.dim, v.in_dtype,
                                                 status);
  return Check(cudaGetLastError(), "view check launch");
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
