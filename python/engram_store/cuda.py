"""CUDA arrays as device lookups take them (docs/gpu.md).

Any object exposing ``__cuda_array_interface__`` (CuPy, PyTorch, Numba) or
``__dlpack__`` with a CUDA device (PyTorch, JAX, CuPy) is accepted; no
framework is imported here. Arrays must be C-contiguous.
"""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from engram_store import _engram_store

_TYPESTRS = {"<f4": "float32", "<f2": "float16", "|u1": "uint8",
             "<u1": "uint8", "<i8": "int64", "<u8": "uint64",
             "<u2": "uint16"}  # uint16: bfloat16 bits
_DLPACK_DTYPES = {(2, 32): "float32", (2, 16): "float16",
                  (4, 16): "bfloat16", (1, 8): "uint8", (0, 64): "int64",
                  (1, 64): "uint64", (1, 16): "uint16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "uint16": 2,
             "uint8": 1, "int64": 8, "uint64": 8}
_DL_CUDA, _DL_CUDA_HOST = 2, 3


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
    if stream is None:
        return 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"stream must be None, an int (cudaStream_t) or a CUDA "
                    f"stream object; got {type(stream).__name__}")


def _contiguous(shape, strides, itemsize: int) -> bool:
    if strides is None:
        return True
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _from_cai(obj, what: str) -> Optional[DeviceArray]:
    try:
        cai = obj.__cuda_array_interface__
    except (AttributeError, TypeError, RuntimeError):
        return None  # e.g. PyTorch bfloat16: DLPack below
    shape = tuple(int(n) for n in cai["shape"])
    dtype = _TYPESTRS.get(cai["typestr"])
    if dtype is None and hasattr(obj, "__dlpack__"):
        # The array interface has no bfloat16: current PyTorch exports it as
        # a 2-byte void ("<V2"). DLPack names the real type.
        return None
    if dtype is None:
        raise TypeError(f"{what} has element type {cai['typestr']!r}; "
                        f"supported: {sorted(set(_TYPESTRS.values()))}")
    if not _contiguous(shape, cai.get("strides"), _ITEMSIZE[dtype]):
        raise ValueError(f"{what} must be C-contiguous")
    ptr, _readonly = cai["data"]
    return DeviceArray(int(ptr), shape, dtype, -1)


def _from_dlpack(obj, what: str, stream: int) -> Optional[DeviceArray]:
    if not hasattr(obj, "__dlpack__"):
        return None
    if hasattr(obj, "__dlpack_device__"):
        kind, _ = obj.__dlpack_device__()
        if int(kind) not in (_DL_CUDA, _DL_CUDA_HOST):
            return None  # a host array
    # DLPack's stream numbering: 1 is the legacy default stream (0 is not
    # allowed); the producer orders its pending writes before our stream.
    capsule = obj.__dlpack__(stream=stream or 1)
    info = _engram_store.dlpack_info(capsule)
    if info["device_type"] not in (_DL_CUDA, _DL_CUDA_HOST):
        raise TypeError(f"{what} is not CUDA memory (DLPack device type "
                        f"{info['device_type']})")
    dtype = _DLPACK_DTYPES.get((info["code"], info["bits"]))
    if dtype is None or info["lanes"] != 1:
        raise TypeError(f"{what} has an unsupported DLPack element type "
                        f"(code {info['code']}, {info['bits']} bits)")
    shape = tuple(info["shape"])
    strides = info["strides"]
    if strides is not None and not _contiguous(
            shape, [s * _ITEMSIZE[dtype] for s in strides], _ITEMSIZE[dtype]):
        raise ValueError(f"{what} must be C-contiguous")
    return DeviceArray(info["ptr"], shape, dtype, info["device_id"])


def device_array(obj, what: str = "array",
                 stream: int = 0) -> Optional[DeviceArray]:
    """``obj`` as a DeviceArray, or None when it is not a CUDA array (a
    NumPy array or a host array-like)."""
    if obj is None or isinstance(obj, np.ndarray):
        return None
    found = _from_cai(obj, what)
    if found is None:
        found = _from_dlpack(obj, what, stream)
    return found
