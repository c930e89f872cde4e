"""Adapters that let inference engines read Engram rows from engram-store
in their own dialect (docs/engines.md).

- :mod:`engram_store.engines.vllm`: vLLM's ``lookup(indices, out,
  background=False, packed=False)`` over a served layer.
- :mod:`engram_store.engines.sglang`: SGLang's ``entry_gather(dst, ids,
  count, table_id, device)``.

Both take torch tensors on the CPU (the RPC path or direct reads, straight
into the tensor's memory) or on a GPU (the device path, or the host path
and one copy where the device path does not speak the dialect). torch is
imported only when an adapter is used.

Engines reuse their step buffers, and a fresh ``Tensor.numpy()`` view per
call costs more than an adapter's own work (about 15 us each with torch
1.13, against a ~200 us decode lookup: bench/engines_bench.py). So each
adapter keeps the checked numpy views of the last 16 buffer sets it saw,
keyed by address, shape and dtype. A kept view holds its tensor, so that
memory cannot pass to another tensor meanwhile: a later tensor with the
same key is that memory. Ids that must be copied (another dtype, on the
GPU) are never kept.
"""
import numpy as np

_TORCH_TO_OUTPUT = {
    "torch.uint8": "uint8",
    "torch.bfloat16": "bfloat16",
    "torch.float16": "float16",
    "torch.float32": "float32",
}


def output_dtype_of(tensor) -> str:
    """The lookup output dtype a tensor holds (uint8: the packed rows)."""
    name = str(tensor.dtype)
    if name not in _TORCH_TO_OUTPUT:
        raise TypeError(f"rows land in uint8 (packed), bfloat16, float16 or "
                        f"float32 tensors; got {name}")
    return _TORCH_TO_OUTPUT[name]


def host_view(tensor, what: str) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor's memory (bfloat16 as its
    uint16 bits), no copy."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{what} must be a CPU tensor here")
    if not tensor.is_contiguous():
        raise ValueError(f"{what} must be contiguous")
    import torch
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def host_ids(ids, what: str = "ids") -> np.ndarray:
    """int64 ids as numpy: a view of a CPU tensor, or a copy from the GPU
    (the host paths read ids on the host)."""
    import torch
    if isinstance(ids, torch.Tensor):
        if ids.device.type != "cpu":
            ids = ids.to("cpu")
        if ids.dtype != torch.int64:
            ids = ids.to(torch.int64)
        return ids.contiguous().numpy()
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
