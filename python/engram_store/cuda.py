"""CUDA arrays as device lookups take them (docs/gpu.md).

Any object exposing ``__cuda_array_interface__`` (CuPy, PyTorch, Numba) or
``__dlpack__`` with a CUDA device (PyTorch, JAX, CuPy) is accepted; no
framework is imported here. Arrays must be C-contiguous. The parsing is
the extension's (python/cuda_arrays.cc), so a lookup's call stays cheap.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from engram_store import _engram_store

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "uint16": 2,
             "uint8": 1, "int64": 8, "uint64": 8}

#: Device words (uint64) of a lookup's ``status``.
STATUS_WORDS = _engram_store.STATUS_WORDS


class DeviceArray(NamedTuple):
    """A contiguous CUDA array: address, shape and element type."""
    ptr: int
    shape: Tuple[int, ...]
    dtype: str
    device: int  # -1 when the interface does not say

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE[self.dtype]


def stream_handle(stream) -> int:
    """The cudaStream_t of ``stream``: None (the legacy default stream), an
    int, or a framework stream (``.cuda_stream``, ``.ptr``, ``.handle``)."""
    return _engram_store.stream_handle(stream)


def device_array(obj, what: str = "array",
                 stream: int = 0) -> Optional[DeviceArray]:
    """``obj`` as a DeviceArray, or None when it is not a CUDA array (a
    NumPy array or a host array-like). A 2-byte void from
    ``__cuda_array_interface__`` (PyTorch's bfloat16) is read through
    DLPack, which names the real type."""
    found = _engram_store.cuda_array(obj, what, stream)
    return None if found is None else DeviceArray(*found)
