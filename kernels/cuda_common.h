// What kernels/*.cu share: CUDA error conversion, the launch width, and the
// device layout of a view. Internal to kernels/ (CUDA code only); everything
// else sees kernels/gpu.h.
#ifndef ENGRAM_KERNELS_CUDA_COMMON_H_
#define ENGRAM_KERNELS_CUDA_COMMON_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/gpu.h"

namespace engram::gpu::internal {

inline absl::Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = err == cudaErrorMemoryAllocation
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, ": ", cudaGetErrorName(err),
                                         " (", cudaGetErrorString(err), ")"));
}

inline cudaStream_t S(Stream s) { return static_cast<cudaStream_t>(s); }

inline constexpr int kThreads = 256;

// Bytes per element of an engram::DType value; 0 for an unknown one.
inline size_t DTypeBytes(int dtype) {
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

// The rows' dtype a view and a lookup compare: the quantization block is
// part of it, so a layer replaced by one of another format is a changed
// layout, never rows decoded the wrong way.
inline int32_t ViewDType(int dtype, int quant_block) {
  return dtype | (quant_block << 8);
}

// A ViewSpec as kernels read it (gpu.h). Plain data in device memory,
// immutable once published.
struct DeviceView {
  uint32_t state;
  int32_t heads;
  int64_t dim;
  int32_t dtype;  // ViewDType(dtype, quant_block)
  int32_t unused;
  uint64_t version;
  uint64_t token_model;  // ViewSpec::token_model
  const uint8_t* tables[kMaxViewHeads];
  int64_t vocab[kMaxViewHeads];
  int64_t offsets[kMaxViewHeads + 1];  // fused offsets; the total last
  const uint64_t* epoch_slots[kMaxViewHeads];
  uint64_t generations[kMaxViewHeads];
};

}  // namespace engram::gpu::internal

#endif  // ENGRAM_KERNELS_CUDA_COMMON_H_
