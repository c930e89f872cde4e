"""vLLM's Engram embedding seam over engram-store (docs/engines.md).

vLLM's DeepSeek-V4.1 Engram module asks its ``ParallelEngramEmbedding`` for
``lookup(indices, out, background=False, packed=False)``: ``indices`` are
the hash kernel's ids into the layer's fused table (per-head offsets
already added), ``[T, n_cols]``; ``out`` is bfloat16 ``[T, heads, 256]``
(dequantized) or, with ``packed``, uint8 ``[T, heads, 264]`` (the stored
FP8 rows with their scales). :class:`EngramLookup` answers that call from a
layer served by engram-store.
"""
from typing import Optional, Tuple

from engram_store.engines import host_ids, host_view, output_dtype_of


class PendingLookup:
    """A ``background=True`` lookup: :meth:`wait` before reading ``out``.
    On a GPU it is an event recorded on the side stream (``event``); on the
    CPU the lookup's future."""

    def __init__(self, out, future=None, event=None):
        self.out = out
        self.event = event
        self._future = future

    def wait(self, stream=None):
        """Blocks until the rows are in ``out`` (CPU), or makes ``stream``
        (default: the current one) wait for them (GPU); returns ``out``."""
        if self._future is not None:
            self._future.result()
            self._future = None
        if self.event is not None:
            import torch
            (stream or torch.cuda.current_stream()).wait_event(self.event)
        return self.out


class EngramLookup:
    """``lookup(indices, out, background, packed)`` over layer ``layer_id``
    of ``client`` (an :class:`engram_store.Client`).

    ``heads=(h0, h1)``: this tensor-parallel rank owns heads [h0, h1) of
    the layer; ``indices`` then has ``h1 - h0`` columns of those heads'
    fused ids. Ids outside a column's head are an error
    (``InvalidArgumentError`` naming the id, column and range), not zero
    rows: the hash kernel only emits ids of each column's own head.
    Thread-safe as the client is; one object per layer.
    """

    def __init__(self, client, layer_id: int,
                 heads: Optional[Tuple[int, int]] = None):
        self.client = client
        self.layer_id = int(layer_id)
        self.heads = None if heads is None else (int(heads[0]), int(heads[1]))
        self._side_stream = None
        # (buffers) -> their checked numpy views, newest last (bounded).
        self._steps = {}

    def lookup(self, indices, out, background: bool = False,
               packed: bool = False):
        """Fills ``out`` with the rows of ``indices`` and returns it (or, with
        ``background``, a :class:`PendingLookup`)."""
        # A step's buffers are checked once and their numpy views kept
        # (engines reuse them; see the package docstring): later steps with
        # the same buffers go straight to the lookup.
        key = (indices.data_ptr(), indices.shape, indices.dtype,
               out.data_ptr(), out.shape, out.dtype, packed)
        step = self._steps.get(key)
        if step is None:
            step = self._check(indices, out, packed)
            if step is None:  # CUDA: the device path
                return self._lookup_cuda(indices, out, background)
            if step[3]:
                if len(self._steps) >= 16:
                    self._steps.pop(next(iter(self._steps)))
                self._steps[key] = step
        ids, rows, want, _ = step
        if background:
            future = self.client.lookup_async(
                self.layer_id, ids, out=rows, output_dtype=want,
                id_form="fused", heads=self.heads)
            return PendingLookup(out, future=future)
        self.client.lookup(self.layer_id, ids, out=rows, output_dtype=want,
                           id_form="fused", heads=self.heads)
        return out

    def _check(self, indices, out, packed):
        """(ids [T, 1, n], rows [T, 1, n, D], dtype, whether the views may
        be kept) for a CPU out; None for a CUDA one. Raises on buffers that
        do not fit."""
        want = "uint8" if packed else "bfloat16"
        if output_dtype_of(out) != want:
            raise TypeError(f"packed={packed} needs a {want} out; got "
                            f"{out.dtype}")
        if indices.dim() != 2 or out.dim() != 3 or \
                out.shape[:2] != indices.shape:
            raise ValueError(f"indices [T, n_cols] and out [T, n_cols, D] "
                             f"must agree; got {tuple(indices.shape)} and "
                             f"{tuple(out.shape)}")
        if out.device.type == "cuda":
            return None
        import torch
        if indices.device.type == "cpu" and indices.dtype == torch.int64 \
                and indices.is_contiguous():
            ids = host_view(indices, "indices")
        else:  # a copy of the ids: not kept, the indices may change
            return (host_ids(indices, "indices")[:, None, :],
                    host_view(out, "out")[:, None, :, :], want, False)
        return (ids[:, None, :], host_view(out, "out")[:, None, :, :], want,
                True)

    def _lookup_cuda(self, indices, out, background):
        import torch
        stream = torch.cuda.current_stream(out.device)
        if background:
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(out.device)
            self._side_stream.wait_stream(stream)
            stream = self._side_stream
        with torch.cuda.stream(stream):
            # Fused ids (and a rank's head slice) are read on the GPU as
            # they are: no offset arithmetic, no host round trip.
            ids = indices
            if ids.device != out.device or ids.dtype != torch.int64 or \
                    not ids.is_contiguous():
                ids = ids.to(out.device, torch.int64).contiguous()
            rows = out.view(out.shape[0], 1, out.shape[1], out.shape[2])
            self.client.lookup_device(
                self.layer_id, ids.view(ids.shape[0], 1, -1), rows,
                stream=stream, id_form="fused", heads=self.heads)
        if background:
            event = torch.cuda.Event()
            event.record(stream)
            return PendingLookup(out, event=event)
        return out
