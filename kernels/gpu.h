// The GPU side of engram-store behind a plain C++ header: no CUDA types, so
// store/ and server/ compile without CUDA. Built from gpu.cu when
// ENGRAM_WITH_CUDA is on, else from gpu_stub.cc, whose functions report the
// GPU tier as unavailable.
#ifndef ENGRAM_KERNELS_GPU_H_
#define ENGRAM_KERNELS_GPU_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace engram::gpu {

// True when this build has CUDA code in it.
bool Compiled();
// Usable CUDA devices; 0 with `why` filled when there are none (no driver,
// no device, or a build without CUDA).
int DeviceCount(std::string* why);
// Selects `device` for the calling thread.
absl::Status SetDevice(int device);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)".
std::string DeviceName(int device);
absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes);

absl::StatusOr<void*> DeviceAlloc(size_t bytes);
void DeviceFree(void* ptr);
// Synchronous host -> device copy.
absl::Status CopyToDevice(void* device_dst, const void* host_src, size_t bytes);
absl::Status CopyToHost(void* host_dst, const void* device_src, size_t bytes);

// Page-locked host memory the GPU can DMA into.
absl::StatusOr<void*> PinnedAlloc(size_t bytes);
void PinnedFree(void* ptr);
// Pins existing host memory (cudaHostRegister); Unregister before freeing.
absl::Status HostRegister(void* ptr, size_t bytes);
void HostUnregister(void* ptr);

// An opaque CUDA stream.
using Stream = void*;
absl::StatusOr<Stream> StreamCreate();
void StreamDestroy(Stream stream);
absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes,
                               Stream stream);
absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes,
                             Stream stream);
absl::Status StreamSynchronize(Stream stream);

// Value of *error_flag when every id was in range.
inline constexpr uint64_t kNoError = ~uint64_t{0};

// One gather: output row i (of num_ids) = table_{i mod heads}[ids[i]],
// converted from in_dtype to out_dtype (engram::DType values). All pointers
// are device pointers: `tables` and `vocab` are arrays of `heads` entries.
// An id outside [0, vocab[h]) is never read: its row is left unwritten and
// *error_flag becomes min(current, i) — reset it to kNoError before the
// launch (ResetErrorFlag).
struct GatherLaunch {
  const uint8_t* const* tables = nullptr;
  const int64_t* vocab = nullptr;
  int heads = 0;
  int64_t dim = 0;
  int in_dtype = 1;
  int out_dtype = 1;
  const int64_t* ids = nullptr;
  int64_t num_ids = 0;
  uint8_t* out = nullptr;
  uint64_t* error_flag = nullptr;
};
absl::Status ResetErrorFlag(uint64_t* error_flag, Stream stream);
absl::Status LaunchGather(const GatherLaunch& launch, Stream stream);

// Device-to-device copy of `bytes` (the benchmark's floor).
absl::Status LaunchDeviceCopy(void* dst, const void* src, size_t bytes,
                              Stream stream);

// Event-timed milliseconds of `iterations` runs of `fn` on `stream`.
absl::StatusOr<float> TimeOnStream(Stream stream, int iterations,
                                   absl::Status (*fn)(void*), void* arg);

}  // namespace engram::gpu

#endif  // ENGRAM_KERNELS_GPU_H_
