// CUDA arrays as device lookups take them (docs/gpu.md): any object with
// __cuda_array_interface__ (CuPy, PyTorch, Numba) or __dlpack__ on a CUDA
// device (PyTorch, JAX, CuPy), read in C++ so a lookup's Python call costs
// little. No framework is imported. Internal to _engram_store.
#ifndef ENGRAM_PYTHON_CUDA_ARRAYS_H_
#define ENGRAM_PYTHON_CUDA_ARRAYS_H_

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace engram::python {

// A C-contiguous CUDA array.
struct CudaArray {
  uintptr_t ptr = 0;
  std::vector<int64_t> shape;
  std::string dtype;  // float32 float16 bfloat16 uint16 uint8 int64 uint64
  int device = -1;    // -1 when the interface does not say
  int64_t count() const;
  size_t nbytes() const;
};

// Bytes per element of a CudaArray dtype.
size_t ItemSize(const std::string& dtype);

// `obj` as a CudaArray; nullopt when it is not a CUDA array (a NumPy array
// or other host array-like). Throws TypeError for an element type device
// lookups do not take or non-CUDA DLPack memory, ValueError for a strided
// array. `stream` is the cudaStream_t the DLPack producer orders its
// pending writes before (0: the legacy default stream).
std::optional<CudaArray> ReadCudaArray(pybind11::handle obj,
                                       const std::string& what,
                                       uintptr_t stream);

// The cudaStream_t of None (0, the legacy default stream), an int, or a
// framework stream (.cuda_stream, .ptr, .handle); TypeError otherwise.
uintptr_t StreamHandle(pybind11::handle stream);

// The fields of an unused DLPack capsule ("dltensor"), which is consumed:
// the caller keeps the producing object (and so the memory) alive.
pybind11::dict DlpackInfo(const pybind11::capsule& capsule);

}  // namespace engram::python

#endif  // ENGRAM_PYTHON_CUDA_ARRAYS_H_
