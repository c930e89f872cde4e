// CUDA implementation of kernels/gpu.h: runtime wrappers and the row gather.
#include <cuda_runtime.h>

#include <algorithm>

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

// Same-dtype gather: each thread moves one V-sized piece of one row, so a
// warp reads whole rows with wide, coalesced accesses. Index is 32-bit when
// the piece count allows (cheaper division).
template <typename V, typename Index>
__global__ void CopyRowsKernel(const uint8_t* const* __restrict__ tables,
                               const int64_t* __restrict__ vocab, int heads,
                               Index pieces_per_row, Index total,
                               const int64_t* __restrict__ ids,
                               uint8_t* __restrict__ out,
                               unsigned long long* __restrict__ error) {
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
__global__ void ConvertRowsKernel(const uint8_t* const* __restrict__ tables,
                                  const int64_t* __restrict__ vocab, int heads,
                                  Index dim, Index total,
                                  const int64_t* __restrict__ ids,
                                  uint8_t* __restrict__ out,
                                  unsigned long long* __restrict__ error) {
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

template <typename V, typename Index>
void LaunchCopy(const GatherLaunch& g, size_t row_bytes, Stream stream) {
  const Index pieces = static_cast<Index>(row_bytes / sizeof(V));
  const Index total = static_cast<Index>(g.num_ids) * pieces;
  CopyRowsKernel<V, Index><<<GridFor(total), kThreads, 0, S(stream)>>>(
      g.tables, g.vocab, g.heads, pieces, total, g.ids, g.out,
      reinterpret_cast<unsigned long long*>(g.error_flag));
}

template <typename Index>
void DispatchCopy(const GatherLaunch& g, size_t row_bytes, Stream stream) {
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
void LaunchConvert(const GatherLaunch& g, Stream stream) {
  const Index total = static_cast<Index>(g.num_ids * g.dim);
  ConvertRowsKernel<kIn, kOut, Index>
      <<<GridFor(total), kThreads, 0, S(stream)>>>(
          g.tables, g.vocab, g.heads, static_cast<Index>(g.dim), total, g.ids,
          g.out, reinterpret_cast<unsigned long long*>(g.error_flag));
}

template <typename Index>
bool DispatchConvert(const GatherLaunch& g, Stream stream) {
  const int pair = g.in_dtype * 10 + g.out_dtype;
  switch (pair) {
    case 12:
      LaunchConvert<1, 2, Index>(g, stream);
      return true;
    case 13:
      LaunchConvert<1, 3, Index>(g, stream);
      return true;
    case 21:
      LaunchConvert<2, 1, Index>(g, stream);
      return true;
    case 23:
      LaunchConvert<2, 3, Index>(g, stream);
      return true;
    case 31:
      LaunchConvert<3, 1, Index>(g, stream);
      return true;
    case 32:
      LaunchConvert<3, 2, Index>(g, stream);
      return true;
    default:
      return false;
  }
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

absl::Status ResetErrorFlag(uint64_t* error_flag, Stream stream) {
  return Check(cudaMemsetAsync(error_flag, 0xff, sizeof(uint64_t), S(stream)),
               "cudaMemsetAsync");
}

absl::Status LaunchGather(const GatherLaunch& g, Stream stream) {
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
      DispatchCopy<uint32_t>(g, row_bytes, stream);
    } else {
      DispatchCopy<uint64_t>(g, row_bytes, stream);
    }
  } else {
    const bool ok = small_index ? DispatchConvert<uint32_t>(g, stream)
                                : DispatchConvert<uint64_t>(g, stream);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "no conversion from dtype ", g.in_dtype, " to ", g.out_dtype));
    }
  }
  return Check(cudaGetLastError(), "gather kernel launch");
}

absl::Status LaunchDeviceCopy(void* dst, const void* src, size_t bytes,
                              Stream stream) {
  return Check(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, S(stream)),
      "cudaMemcpyAsync D2D");
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
