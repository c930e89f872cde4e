"""SGLang's Engram offload seam over engram-store (docs/engines.md).

SGLang's offloaded Engram tables answer ``entry_gather(dst, ids, count,
table_id, device)``: the first ``count`` entries of ``ids`` (ids into a
fused table) gathered into the first ``count`` rows of ``dst``.
:class:`EntryGather` answers it from layers served by engram-store, one
layer per ``table_id``.
"""
from typing import Mapping, Optional

from engram_store.engines import host_ids, host_view, output_dtype_of


class EntryGather:
    """``entry_gather`` over ``client`` (an :class:`engram_store.Client`).

    ``tables`` maps SGLang's ``table_id`` to engram-store layer ids
    (default: the same number). ``dst``'s dtype picks the rows: uint8
    ``[n, 264]`` packed FP8 rows, or bfloat16/float16/float32 ``[n, 256]``
    dequantized values (any dtype a float layer converts to). A CUDA ``dst``
    is filled by one copy from pinned host memory on the current stream.
    Thread-safe as the client is.
    """

    def __init__(self, client, tables: Optional[Mapping[int, int]] = None):
        self.client = client
        self.tables = dict(tables) if tables is not None else None
        self._pinned = {}  # (dtype, row shape) -> reused pinned buffer
        # (buffers) -> their checked numpy views, newest last (bounded).
        self._steps = {}

    def layer_of(self, table_id: int) -> int:
        if self.tables is None:
            return int(table_id)
        if table_id not in self.tables:
            raise KeyError(f"table_id {table_id} is not mapped to a layer "
                           f"(known: {sorted(self.tables)})")
        return self.tables[table_id]

    def entry_gather(self, dst, ids, count: int, table_id: int, device=None):
        """Gathers ``ids[:count]`` into ``dst[:count]``; returns ``dst``.
        ``device`` is where ``dst`` lives (checked, not moved)."""
        count = int(count)
        if dst.device.type == "cuda":
            return self._gather_cuda(dst, ids, count, table_id, device)
        # A step's buffers are checked once and their numpy views kept
        # (engines reuse them; see the package docstring).
        key = (dst.data_ptr(), dst.shape, dst.dtype, ids.data_ptr(),
               ids.shape, ids.dtype, device)
        step = self._steps.get(key)
        if step is None:
            step = self._check(dst, ids, device)
            if step[3]:
                if len(self._steps) >= 16:
                    self._steps.pop(next(iter(self._steps)))
                self._steps[key] = step
        rows, entries, dtype, _, capacity = step
        if count < 0 or count > len(entries) or count > capacity:
            raise ValueError(f"count {count} must fit ids ({len(entries)}) "
                             f"and dst ({capacity})")
        if count == 0:
            return dst
        layer = self.layer_of(table_id)
        if rows is not None:
            self.client.lookup(layer, entries[:count], out=rows[:count],
                               output_dtype=dtype, id_form="entries")
            return dst
        host = self._pinned_rows(dst, count)
        self.client.lookup(layer, entries[:count], out=host_view(host, "dst"),
                           output_dtype=dtype, id_form="entries")
        dst[:count].copy_(host, non_blocking=True)
        return dst

    def _gather_cuda(self, dst, ids, count, table_id, device):
        """The device path: the entries read on the GPU as they are, on the
        current stream."""
        import torch
        if device is not None and str(dst.device) != str(device) and \
                dst.device.type != str(device):
            raise ValueError(f"dst is on {dst.device}, not {device}")
        if count < 0 or count > ids.shape[0] or count > dst.shape[0]:
            raise ValueError(f"count {count} must fit ids ({ids.shape[0]}) "
                             f"and dst ({dst.shape[0]})")
        if count == 0:
            return dst
        sel = ids[:count]
        if sel.device != dst.device or sel.dtype != torch.int64 or \
                not sel.is_contiguous():
            sel = sel.to(dst.device, torch.int64).contiguous()
        self.client.lookup_device(
            self.layer_of(table_id), sel, dst[:count], id_form="entries",
            stream=torch.cuda.current_stream(dst.device))
        return dst

    def _check(self, dst, ids, device):
        """(rows view or None for a CUDA dst, ids view, dtype, whether the
        views may be kept, dst's row count)."""
        if device is not None and str(dst.device) != str(device) and \
                dst.device.type != str(device):
            raise ValueError(f"dst is on {dst.device}, not {device}")
        dtype = output_dtype_of(dst)
        import torch
        in_place = ids.device.type == "cpu" and ids.dtype == torch.int64 \
            and ids.is_contiguous()
        entries = host_view(ids, "ids") if in_place else host_ids(ids)
        rows = host_view(dst, "dst") if dst.device.type == "cpu" else None
        return rows, entries, dtype, in_place, dst.shape[0]

    def _pinned_rows(self, dst, count):
        import torch
        key = (dst.dtype, tuple(dst.shape[1:]))
        buf = self._pinned.get(key)
        if buf is None or buf.shape[0] < count:
            torch.cuda.current_stream(dst.device).synchronize()
            buf = torch.empty((max(count, 1),) + tuple(dst.shape[1:]),
                              dtype=dst.dtype, pin_memory=True)
            self._pinned[key] = buf
        return buf[:count]
