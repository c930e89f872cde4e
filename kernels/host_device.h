// ENGRAM_HOST_DEVICE: a function the CUDA kernels and the CPU tests share
// (compiled for both by nvcc, as a plain inline function elsewhere).
#ifndef ENGRAM_KERNELS_HOST_DEVICE_H_
#define ENGRAM_KERNELS_HOST_DEVICE_H_

#if defined(__CUDACC__)
#define ENGRAM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ENGRAM_HOST_DEVICE inline
#endif

#endif  // ENGRAM_KERNELS_HOST_DEVICE_H_
