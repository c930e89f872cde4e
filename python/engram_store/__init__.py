"""engram_store: the Python client of engram-store.

A thin layer over the C++ client (the zero-copy Lookup path, cluster
routing and same-host direct reads come with it). Shapes: a layer has one
table ``[N_h, D]`` per head; a lookup takes int64 ids ``[B, L, H]`` and
returns rows ``[B, L, H, D]``.

    import engram_store, numpy as np
    with engram_store.Client("127.0.0.1:50051") as c:
        rows = c.lookup(0, np.array([[[5, 6, 7, 8]]]))   # the --demo layer
"""
import atexit
import concurrent.futures
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

try:
    from engram_store import _engram_store as _ext
except ImportError as e:  # the package without its C++ extension
    raise ImportError(
        "engram_store's C++ extension (_engram_store) is missing or does not "
        "load: build it with `cmake --build build --target _engram_store` "
        "(needs pybind11-dev; scripts/install_deps.sh installs it) and put "
        f"build/python on PYTHONPATH, or install it as README says ({e})"
    ) from e
from engram_store import cuda as _cuda
from engram_store.errors import (  # noqa: F401  (re-exported)
    AbortedError, AlreadyExistsError, CancelledError, DataLossError,
    DeadlineExceededError, Error, FailedPreconditionError, InternalError,
    InvalidArgumentError, NotFoundError, OutOfRangeError,
    PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError,
    UnavailableError, UnimplementedError, UnknownError, from_status)
from engram_store.mooncake import EngramStore, EngramStoreConfig  # noqa: F401

__all__ = ["Client", "DeviceLookup", "DeviceLookups", "LayerInfo", "Error", "EngramStore",
           "EngramStoreConfig", "EngramHasher"]

#: The build's version (the same string as ``engramd --version``).
__version__ = _ext.__version__

_NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),  # numpy has no bfloat16: its bits
    "uint8": np.dtype(np.uint8),
}
# How lookup ids name rows (engram.v1.IdForm).
_ID_FORMS = ("per_head", "fused", "entries")




class EngramHasher:
    """DeepSeek's Engram n-gram hash of a model (docs/tokens.md): raw token
    ids in, the row ids of every Engram table out, bit-identical with the
    reference. ``config_path``: the model's config.json (``engram_*`` keys,
    under ``text_config`` or at the top level); ``token_map_path``: raw id
    -> compressed id, a 1-D int32/int64 ``.npy`` or raw int32 ``.i32``."""

    def __init__(self, config_path: str, token_map_path: str):
        self._h = _call(_ext.EngramHasher, str(config_path),
                        str(token_map_path))
        #: Engram layer ids, in config order.
        self.layer_ids = list(self._h.layer_ids)
        #: (N - 1) * H: ids per position, order 2's heads first.
        self.ids_per_position = self._h.ids_per_position

    def multipliers(self, layer_id: int) -> List[int]:
        return list(self._h.multipliers(int(layer_id)))

    def table_sizes(self, layer_id: int) -> List[int]:
        return list(self._h.table_sizes(int(layer_id)))

    def hash(self, layer_id: int, tokens, history=None,
             fused: bool = False) -> np.ndarray:
        """int64 ``[B, T, ids_per_position]`` for raw ``tokens`` ``[B, T]``;
        ``history`` ``[B, h]`` (h <= N - 1): each sequence's previous raw
        ids, oldest first (None: every sequence starts here). ``fused``:
        ids into the layer's fused table."""
        tokens = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T]; got shape "
                             f"{tokens.shape}")
        batch = tokens.shape[0]
        if history is None:
            history = np.empty((batch, 0), np.int64)
        history = np.ascontiguousarray(np.asarray(history, dtype=np.int64))
        if history.ndim != 2 or history.shape[0] != batch:
            raise ValueError(f"history must be [B = {batch}, h]; got shape "
                             f"{history.shape}")
        out = np.empty(tokens.shape + (self.ids_per_position,), np.int64)
        _call(self._h.hash_into, int(layer_id), tokens, batch, history,
              bool(fused), out, False, 0)
        return out

    def hash_compressed(self, layer_id: int, values, history_length: int,
                        fused: bool = False) -> np.ndarray:
        """The hash over compressed ids ``[B, h + T]`` (history then
        tokens, no token map), for engines with their own map and tests."""
        values = np.ascontiguousarray(np.asarray(values, dtype=np.int64))
        if values.ndim != 2:
            raise ValueError("values must be [B, h + T]")
        batch, tokens = values.shape[0], values.shape[1] - history_length
        out = np.empty((batch, tokens, self.ids_per_position), np.int64)
        _call(self._h.hash_into, int(layer_id), values, batch,
              np.empty(0, np.int64), bool(fused), out, True,
              int(history_length))
        return out


class DeviceLookup:
    """One :meth:`Client.lookup_device` in flight on its stream."""

    __slots__ = ("_plan", "_index", "_out", "path")

    def __init__(self, plan, index, out, path):
        self._plan = plan  # holds ids, out and status alive
        self._index = index
        self._out = out
        #: "gpu-shared", "host-mapped" or "rpc": where the rows came from.
        self.path = path

    def result(self):
        """Waits for the stream, raises what the GPU found, returns out."""
        _call(self._plan.result, self._index)
        return self._out


class DeviceLookups:
    """Device lookups read once and launched at every step
    (:meth:`Client.device_lookups`): the arrays' interfaces, the stream and
    the layers are resolved when it is made, so :meth:`launch` goes straight
    to C++. The zero-copy lookups with the same dtypes go out as one kernel
    launch. It keeps its arrays alive; reuse it for as long as they are the
    step's buffers (what a CUDA graph captures, too)."""

    __slots__ = ("_plan", "_outs")

    def __init__(self, plan, outs):
        self._plan = plan
        self._outs = outs

    def launch(self) -> "DeviceLookups":
        """Enqueues every lookup on the stream; returns at once."""
        try:
            self._plan.launch()
        except _ext.StatusError as e:
            code, message = e.args
            raise from_status(code, message) from None
        return self

    __call__ = launch

    @property
    def paths(self) -> List[str]:
        """Where each lookup's rows came from at the last launch."""
        return self._plan.paths()

    def result(self) -> list:
        """Waits for the stream, raises the first error the GPU found,
        returns the outs."""
        _call(self._plan.result, -1)
        return list(self._outs)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A layer as the server describes it."""
    layer_id: int
    table_vocab_sizes: List[int]
    embedding_dim: int
    dtype: str  # float32, bfloat16, float16 or uint8
    store_keys: List[str]
    bytes: int
    version: int  # 1 at first commit, +1 per replace
    # None, or how uint8 rows encode numbers: {"format": "fp8_e4m3",
    # "scale": "ue8m0", "block": 32} (docs/tables.md, quantized layers).
    quant: Optional[dict] = None

    @property
    def num_heads(self) -> int:
        return len(self.table_vocab_sizes)

    @property
    def values_per_row(self) -> int:
        """Values a float lookup returns per row: D, or the weights of a
        quantized row (256 of DeepSeek's 264 bytes)."""
        if self.quant is None:
            return self.embedding_dim
        block = self.quant["block"]
        return self.embedding_dim // (block + 1) * block


@atexit.register
def _drain_pending_lookups(timeout_s: float = 60) -> None:
    # Lookups still in flight are waited for at interpreter exit (atexit
    # runs while threads may still take the GIL), so no completion reaches
    # a Python that is being torn down.
    _ext.wait_for_lookups(timeout_s)


class _WaiterList(list):
    """Future._waiters that asks for a completion notice when
    concurrent.futures.wait() / as_completed() install a waiter."""

    def __init__(self, future):
        super().__init__()
        self._future = future

    def append(self, waiter):
        super().append(waiter)
        self._future._notify_me()


class LookupFuture(concurrent.futures.Future):
    """The future of :meth:`Client.lookup_async`: a
    ``concurrent.futures.Future`` whose completion does not need the GIL.

    ``result()`` waits in C++ with the GIL released, and the client's
    completion thread takes the GIL only if something asked to be told
    (``add_done_callback``, ``asyncio.wrap_future``,
    ``concurrent.futures.wait``/``as_completed``): a prefetch never competes
    with the thread computing in Python. A lookup in flight cannot be
    cancelled.
    """

    def __init__(self, pending, out, on_error):
        super().__init__()
        self._pending, self._out, self._on_error = pending, out, on_error
        self._waiters = _WaiterList(self)
        self.set_running_or_notify_cancel()

    def _settle(self) -> None:
        # Moves the C++ outcome into the Future (once; any thread).
        if super().done():
            return
        code, message = self._pending.status()
        try:
            if code == 0:
                self.set_result(self._out)
            else:
                self._on_error()
                self.set_exception(from_status(code, message))
        except concurrent.futures.InvalidStateError:
            pass  # another thread settled it first

    def _notify_me(self) -> None:
        if not self._pending.on_done(self._settle):
            self._settle()  # already complete

    def done(self) -> bool:
        if self._pending.done():
            self._settle()
        return super().done()

    def result(self, timeout: Optional[float] = None):
        if not self._pending.wait(timeout):
            raise concurrent.futures.TimeoutError()
        self._settle()
        return super().result(0)

    def exception(self, timeout: Optional[float] = None):
        if not self._pending.wait(timeout):
            raise concurrent.futures.TimeoutError()
        self._settle()
        return super().exception(0)

    def add_done_callback(self, fn) -> None:
        super().add_done_callback(fn)
        self._notify_me()


_SECURITY_KEYS = ("token", "tls", "tls_ca_file", "tls_cert_file",
                  "tls_key_file", "tls_server_name")


def _security(args: dict) -> dict:
    return {k: args[k] for k in _SECURITY_KEYS if args.get(k) is not None}


def _info(d: dict) -> LayerInfo:
    return LayerInfo(**d)


def _layout_of(info: LayerInfo):
    return (info.embedding_dim, info.dtype, info.values_per_row,
            len(info.table_vocab_sizes))


def _quant_triple(quant: Optional[dict]):
    """(format, scale, block) of a ``quant`` argument, or None."""
    if quant is None:
        return None
    if not isinstance(quant, dict) or set(quant) != {"format", "scale",
                                                      "block"}:
        raise ValueError('quant must be {"format": "fp8_e4m3", "scale": '
                         f'"ue8m0", "block": 32}}; got {quant!r}')
    return (str(quant["format"]), str(quant["scale"]), int(quant["block"]))


def _call(fn, *args):
    try:
        return fn(*args)
    except _ext.StatusError as e:
        code, message = e.args
        raise from_status(code, message) from None


def _dtype_of(array: np.ndarray, dtype: Optional[str]) -> str:
    if dtype is not None:
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(_NUMPY_DTYPES)}; got {dtype!r}")
        return dtype
    if array.dtype.name == "bfloat16":  # e.g. ml_dtypes
        return "bfloat16"
    for name, np_dtype in _NUMPY_DTYPES.items():
        if name != "bfloat16" and array.dtype == np_dtype:
            return name
    raise TypeError(
        f"tables of dtype {array.dtype} are not stored as such: use float32, "
        "float16 or uint8 arrays, or dtype='bfloat16' over uint16 bits")


class Client:
    """One connection to engramd (or a cluster, see :meth:`cluster`).

    Thread-safe: any number of threads may call it at once; every call
    releases the GIL while it waits.
    """

    def __init__(self, address: str, *, timeout_s: float = 60,
                 num_channels: int = 1, direct_reads: bool = False,
                 token: Optional[str] = None, tls: bool = False,
                 tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None):
        """``token``: sent as a bearer token with every call; ``tls`` /
        ``tls_ca_file``: TLS, verifying the server (system roots / that CA);
        ``tls_cert_file`` + ``tls_key_file``: a client certificate (mTLS).
        See docs/security.md."""
        self._c = _call(_ext.Client.connect, address, float(timeout_s),
                        int(num_channels), bool(direct_reads),
                        _security(locals()))
        self._layouts = {}  # layer id -> (D, dtype, values, H): _layout()

    @classmethod
    def cluster(cls, addresses: Sequence[str], replication: int, *,
                timeout_s: float = 60, num_channels: int = 1,
                direct_reads: bool = False, **security) -> "Client":
        """A client that routes lookups to the owners of the rows itself
        (``security``: the keyword arguments of ``Client``)."""
        self = cls.__new__(cls)
        unknown = set(security) - set(_SECURITY_KEYS)
        if unknown:
            raise TypeError(f"unknown arguments {sorted(unknown)}")
        self._c = _call(_ext.Client.connect_cluster, list(addresses),
                        int(replication), float(timeout_s), int(num_channels),
                        bool(direct_reads), _security(security))
        self._layouts = {}
        return self

    # -- layers ------------------------------------------------------------
    def populate(self, layer_id: int, tables: Sequence[np.ndarray], *,
                 dtype: Optional[str] = None, replace: bool = False,
                 progress: Optional[Callable[[int, int], None]] = None,
                 quant: Optional[dict] = None) -> LayerInfo:
        """Creates (or with ``replace`` replaces) a layer.

        ``tables``: one C-contiguous ``[N_h, D]`` array per head, all of one
        dtype (float32, float16, uint8; bfloat16 as ``dtype='bfloat16'`` over
        uint16 arrays). ``progress(sent_bytes, total_bytes)`` is called as
        the rows stream. Create-only unless ``replace``.

        ``quant``: uint8 rows that are quantized numbers, e.g. DeepSeek's
        ``{"format": "fp8_e4m3", "scale": "ue8m0", "block": 32}`` over
        ``[N_h, 264]`` rows (256 weights, 8 scales); float lookups of such a
        layer return the 256 dequantized values.
        """
        if isinstance(tables, np.ndarray) or not len(tables):
            raise ValueError("tables must be a non-empty list of [N_h, D] "
                             "arrays, one per head")
        arrays = [np.asarray(t) for t in tables]
        name = _dtype_of(arrays[0], dtype)
        dim = None
        for h, a in enumerate(arrays):
            if a.ndim != 2:
                raise ValueError(f"table {h} has shape {a.shape}; each head "
                                 "is a 2-D [N_h, D] array")
            if a.dtype != arrays[0].dtype:
                raise TypeError(f"table {h} is {a.dtype}, table 0 "
                                f"{arrays[0].dtype}: one dtype per layer")
            if dim is None:
                dim = a.shape[1]
            elif a.shape[1] != dim:
                raise ValueError(f"table {h} has D = {a.shape[1]}, table 0 "
                                 f"D = {dim}")
            if not a.flags.c_contiguous:
                raise ValueError(f"table {h} is not C-contiguous "
                                 "(np.ascontiguousarray)")
        if name == "bfloat16" and arrays[0].dtype.itemsize != 2:
            raise TypeError("bfloat16 tables are given as uint16 bits")
        if name != "bfloat16" and arrays[0].dtype != _NUMPY_DTYPES[name]:
            raise TypeError(f"dtype={name!r} needs {_NUMPY_DTYPES[name]} "
                            f"arrays; got {arrays[0].dtype}")
        info = _info(_call(self._c.populate, int(layer_id), arrays,
                           [int(a.shape[0]) for a in arrays], int(dim), name,
                           bool(replace), progress, _quant_triple(quant)))
        self._layouts[info.layer_id] = _layout_of(info)
        return info

    def _prepare(self, layer_id, ids, out, output_dtype, id_form="per_head"):
        ids = np.ascontiguousarray(np.asarray(ids))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers; got {ids.dtype}")
        if id_form not in _ID_FORMS:
            raise ValueError(f"id_form must be one of {_ID_FORMS}; got "
                             f"{id_form!r}")
        rank = 1 if id_form == "entries" else 3
        if ids.ndim != rank:
            want = "[n]" if rank == 1 else "[B, L, H]"
            raise ValueError(f"{id_form} ids must be {want}; got shape "
                             f"{ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if output_dtype is not None and output_dtype not in _NUMPY_DTYPES:
            raise ValueError(f"output_dtype must be one of "
                             f"{sorted(_NUMPY_DTYPES)}; got {output_dtype!r}")
        if out is None:
            dim, stored, values, _ = self._layout(layer_id)
            # The dtype goes to the server explicitly: if the layer changed
            # under the cached layout, the server refuses the call (and
            # lookup() refreshes) instead of filling `out` with other rows.
            output_dtype = output_dtype or stored
            if output_dtype != "uint8":
                dim = values  # a quantized layer's values, dequantized
            out = np.empty(ids.shape + (dim,),
                           dtype=_NUMPY_DTYPES[output_dtype])
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError("out must be a numpy array")
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("out must be a writable C-contiguous array")
            if out.shape[:rank] != ids.shape or out.ndim != rank + 1:
                want = "[n, D]" if rank == 1 else "[B, L, H, D]"
                raise ValueError(f"out has shape {out.shape}; ids {ids.shape} "
                                 f"need {want}")
            if output_dtype is not None and \
                    out.dtype != _NUMPY_DTYPES[output_dtype]:
                raise TypeError(f"out is {out.dtype}; output_dtype "
                                f"{output_dtype} needs "
                                f"{_NUMPY_DTYPES[output_dtype]}")
            self._check_out_rows(layer_id, out, output_dtype)
        return ids, out, output_dtype

    def _check_out_rows(self, layer_id, out, output_dtype):
        """Refuses, before anything is sent, an ``out`` whose rows cannot be
        the layer's: the wrong dtype for the stored rows, or the wrong D
        (checked against the cached layout, asked again once if it seems
        to have changed)."""
        for refresh in (False, True):
            dim, stored, values, _ = self._layout(layer_id, refresh=refresh)
            dtype = output_dtype or stored
            want = dim if dtype == "uint8" else values
            if out.dtype == _NUMPY_DTYPES[dtype] and out.shape[-1] == want:
                return
        if out.dtype != _NUMPY_DTYPES[dtype]:
            raise TypeError(f"out is {out.dtype}; layer {layer_id}'s rows "
                            f"are {dtype} ({_NUMPY_DTYPES[dtype]}): pass "
                            f"output_dtype to convert")
        raise ValueError(f"out's rows have {out.shape[-1]} values; layer "
                         f"{layer_id}'s {dtype} rows have {want}")

    def _layout(self, layer_id: int, refresh: bool = False):
        """(D, stored dtype, values per row) of a layer, asked once and
        cached: lookups without ``out`` need it to size their result."""
        layout = None if refresh else self._layouts.get(layer_id)
        if layout is None:
            layout = _layout_of(self.describe(layer_id))
            self._layouts[layer_id] = layout
        return layout

    def lookup(self, layer_id: int, ids, *, out=None,
               output_dtype: Optional[str] = None, id_form: str = "per_head",
               heads: Optional[Tuple[int, int]] = None):
        """Gathers the rows of ``ids`` (int64 ``[B, L, H]``, any array-like).

        Returns ``[B, L, H, D]`` rows of the stored dtype (or
        ``output_dtype`` among the float dtypes; bfloat16 as uint16 bits).
        With ``out`` (C-contiguous, that shape and dtype) the rows land in
        it and it is returned: no other copy. A CUDA array ``out`` takes the
        device path (:meth:`lookup_device`, waited for; its dtype is the
        output dtype).

        ``id_form="fused"``: ids in the layer's fused id space (head h's
        rows start at ``sum(table_vocab_sizes[:h])``), column h in head h's
        range. ``id_form="entries"``: ids ``[n]``, each any fused id; rows
        ``[n, D]``. ``heads=(h0, h1)``: only those heads (a tensor-parallel
        rank's slice): ids ``[B, L, h1 - h0]``, entries within their range.
        """
        plain = id_form == "per_head" and heads is None
        if out is not None and not isinstance(out, np.ndarray) and \
                _cuda.device_array(out, "out") is not None:
            if output_dtype is not None:
                raise ValueError("with a CUDA out, its dtype is the output "
                                 "dtype")
            if not plain:
                raise ValueError("device lookups take per-head ids of every "
                                 "head; look up into host memory for fused "
                                 "ids, entries or head slices")
            return self.lookup_device(layer_id, ids, out).result()
        allocated = out is None
        ids, out, dtype = self._prepare(layer_id, ids, out, output_dtype,
                                        id_form)
        try:
            _call(self._c.lookup_into, int(layer_id), ids, list(ids.shape),
                  out, dtype, id_form, heads)
        except (InvalidArgumentError, NotFoundError):
            if not allocated or layer_id not in self._layouts:
                raise
            # Sized from a cached layout that a replace (or remove and
            # re-create) may have changed: ask again, retry once if it did.
            cached = self._layouts.pop(layer_id)
            if self._layout(layer_id, refresh=True) == cached:
                raise
            return self.lookup(layer_id, ids, output_dtype=output_dtype,
                               id_form=id_form, heads=heads)
        return out

    def lookup_many(self, lookups, *, output_dtype: Optional[str] = None,
                    id_form: str = "per_head",
                    heads: Optional[Tuple[int, int]] = None) -> list:
        """Several lookups in one round trip (say both Engram layers of a
        step): ``lookups`` is a sequence of ``(layer_id, ids)`` or
        ``(layer_id, ids, out)``; returns their rows in order, as
        :meth:`lookup` would. ``output_dtype``, ``id_form`` and ``heads``
        apply to each. All are checked before any row is read: every result
        is filled, or the call raises naming the lookup (``lookups[i]``).
        """
        entries, results = [], []
        for item in lookups:
            if len(item) not in (2, 3):
                raise ValueError("each lookup is (layer_id, ids) or "
                                 "(layer_id, ids, out)")
            layer_id, ids = int(item[0]), item[1]
            out = item[2] if len(item) == 3 else None
            ids, out, dtype = self._prepare(layer_id, ids, out, output_dtype,
                                            id_form)
            entries.append((layer_id, ids, list(ids.shape), out, dtype,
                            id_form, heads))
            results.append(out)
        if not entries:
            raise ValueError("lookup_many needs at least one lookup")
        _call(self._c.lookup_many_into, entries)
        return results

    def status(self) -> dict:
        """Everything at a glance (the Status RPC, `engramctl status`):
        ready / not_ready_reason, memory, layers, calls per RPC since start,
        lookup_latency (p50/p99 since start), loads in progress (bytes done
        and total), cluster and process figures."""
        return _call(self._c.status)

    def server_info(self) -> dict:
        """The server's build and state: ``version``, ``uptime_seconds``,
        ``shard_index`` / ``shards`` (0 shards: a single node),
        ``layers``."""
        return _call(self._c.server_info)

    def lookup_tokens(self, layer_ids, tokens, *, history=None,
                      output_dtype: Optional[str] = None,
                      out: Optional[list] = None) -> list:
        """Token ids in, rows out (docs/tokens.md): ``tokens`` int64
        ``[B, T]`` raw ids; ``history`` ``[B, h]`` each sequence's previous
        raw ids, oldest first (None: every sequence starts here). Each layer
        of ``layer_ids`` (loaded with its model's hash) gives ``[B, T, H,
        D]`` rows, in order: the server hashes the tokens as the model
        does, then gathers (a direct-reads or cluster client hashes them
        itself and reads the rows from their owners). ``out``: one C-contiguous array per layer to
        fill (a step's reused buffers), checked before anything is sent;
        returned."""
        if isinstance(layer_ids, int):
            layer_ids = [layer_ids]
        tokens = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T]; got shape "
                             f"{tokens.shape}")
        if history is None:
            history = np.empty((tokens.shape[0], 0), np.int64)
        history = np.ascontiguousarray(np.asarray(history, dtype=np.int64))
        if history.ndim != 2 or history.shape[0] != tokens.shape[0]:
            raise ValueError(f"history must be [B = {tokens.shape[0]}, h]; "
                             f"got shape {history.shape}")
        if output_dtype is not None and output_dtype not in _NUMPY_DTYPES:
            raise ValueError(f"output_dtype must be one of "
                             f"{sorted(_NUMPY_DTYPES)}; got {output_dtype!r}")
        if out is not None:
            out = list(out)
            if len(out) != len(layer_ids):
                raise ValueError(f"out has {len(out)} arrays for "
                                 f"{len(layer_ids)} layers")
            for layer, o in zip(layer_ids, out):
                if not isinstance(o, np.ndarray) or not o.flags.c_contiguous \
                        or not o.flags.writeable:
                    raise TypeError("out must be writeable C-contiguous "
                                    "numpy arrays")
                self._check_out_rows(int(layer), o, output_dtype)
                heads = self._layout(int(layer))[3]
                if o.shape[:-1] != tokens.shape + (heads,):
                    raise ValueError(
                        f"out for layer {layer} is {o.shape}; its rows are "
                        f"[B, T, H, D] = {tokens.shape + (heads,)} + [D]")
            _call(self._c.lookup_tokens_into, [int(l) for l in layer_ids],
                  tokens, list(tokens.shape), history, out, output_dtype)
            return out
        # Sized from the cached layouts: a layer changed meanwhile answers
        # rows of another size, which are refused; then asked again, once.
        for attempt in (0, 1):
            outs = []
            for layer in layer_ids:
                dim, stored, values, heads = self._layout(
                    int(layer), refresh=attempt == 1)
                dtype = output_dtype or stored
                outs.append(np.empty(
                    tokens.shape + (heads, dim if dtype == "uint8" else
                                    values), _NUMPY_DTYPES[dtype]))
            try:
                _call(self._c.lookup_tokens_into,
                      [int(l) for l in layer_ids], tokens,
                      list(tokens.shape), history, outs, output_dtype)
                return outs
            except (InvalidArgumentError, NotFoundError):
                if attempt == 1:
                    raise
        return outs

    def lookup_async(self, layer_id: int, ids, *,
                     out: Optional[np.ndarray] = None,
                     output_dtype: Optional[str] = None,
                     id_form: str = "per_head",
                     heads: Optional[Tuple[int, int]] = None
                     ) -> "LookupFuture":
        """:meth:`lookup` that returns at once, for prefetching.

        The future's result is ``out`` (allocated if not given); ``ids`` and
        ``out`` are kept alive until it completes. From asyncio:
        ``await asyncio.wrap_future(client.lookup_async(...))``.
        """
        allocated = out is None
        ids, out, dtype = self._prepare(layer_id, ids, out, output_dtype,
                                        id_form)

        def on_error() -> None:
            if allocated:  # the cached layout may be stale: ask next time
                self._layouts.pop(layer_id, None)

        pending = _call(self._c.lookup_into_async, int(layer_id), ids,
                        list(ids.shape), out, dtype, id_form, heads)
        return LookupFuture(pending, out, on_error)

    def lookup_device(self, layer_id: int, ids, out, *, stream=None,
                      status=None, id_form: str = "per_head",
                      heads: Optional[Tuple[int, int]] = None
                      ) -> "DeviceLookup":
        """Gathers rows into ``out``, a CUDA array ``[B, L, H, D]``, on
        ``stream`` (None: the legacy default stream; an int cudaStream_t or
        a framework stream object), and returns without waiting for the GPU.

        ``out`` (and ``ids`` when on the GPU) expose
        ``__cuda_array_interface__`` or ``__dlpack__``; ``ids`` may also be
        a host array-like. The rows come from the server's GPU copy (CUDA
        IPC) or its host tables (read over PCIe) when the server is on this
        host, else through the RPC path (docs/gpu.md). ``out``'s dtype is
        the output dtype (bfloat16 as a bfloat16 or uint16 array). Errors
        the GPU finds (an id out of range, the layer removed meanwhile) come
        from :meth:`DeviceLookup.result`; ``status`` (a CUDA array of
        ``engram_store.cuda.STATUS_WORDS`` (u)int64) gives concurrent
        streams their own status words. For the same buffers at every step,
        :meth:`device_lookups` reads them once. ``id_form`` ("per_head",
        "fused" or "entries": ids ``[n]``, out ``[n, D]``) and ``heads`` (a
        head slice ``(begin, end)``, ids and out of its width) as
        :meth:`lookup` takes them, read as they are on the GPU.
        """
        plan = _call(_ext.DeviceLookupPlan, self._c,
                     ((layer_id, ids, out, status),), stream, id_form, heads)
        _call(plan.launch)
        return DeviceLookup(plan, 0, out, plan.paths()[0])

    def device_lookups(self, lookups, *, stream=None,
                       id_form: str = "per_head",
                       heads: Optional[Tuple[int, int]] = None
                       ) -> "DeviceLookups":
        """Prepares lookups of several layers (a decode step's Engram
        layers) for :meth:`DeviceLookups.launch`: ``lookups`` is a sequence
        of ``(layer_id, ids, out)`` or ``(layer_id, ids, out, status)`` as
        :meth:`lookup_device` takes them, all on ``stream`` and one device.
        Two lookups of one layer need a ``status`` each; ``id_form`` and
        ``heads`` apply to every lookup. Nothing is launched yet."""
        lookups = tuple(tuple(x) for x in lookups)
        plan = _call(_ext.DeviceLookupPlan, self._c, lookups, stream, id_form,
                     heads)
        return DeviceLookups(plan, tuple(x[2] for x in lookups))

    def device_token_lookups(self, layer_ids, tokens, out, *, history=None,
                             stream=None, status=None) -> "DeviceLookups":
        """Token lookups on the GPU (docs/tokens.md "On the GPU"), read once
        for :meth:`DeviceLookups.launch`: ``tokens`` int64 ``[B, T]`` raw
        ids and ``history`` ``[B, h]`` (None: sequence starts), on the GPU
        or the host as :meth:`lookup_device`'s ids; ``out`` one CUDA array
        ``[B, T, H, D]`` per layer of ``layer_ids``. Each layer's model hash
        runs inside the gather's launch, so a step's Engram layers cost one
        launch and can be captured in a CUDA graph; ``status``: one status
        array per layer, or None. Nothing is launched yet."""
        if isinstance(layer_ids, int):
            layer_ids = [layer_ids]
        outs = tuple(out) if isinstance(out, (list, tuple)) else (out,)
        statuses = () if status is None else tuple(status)
        plan = _call(_ext.DeviceLookupPlan, self._c,
                     [int(x) for x in layer_ids], tokens, history, outs,
                     statuses, stream)
        return DeviceLookups(plan, outs)

    def lookup_tokens_device(self, layer_ids, tokens, out, *, history=None,
                             stream=None, status=None) -> "DeviceLookups":
        """:meth:`device_token_lookups`, launched: returns at once;
        ``result()`` waits and raises what the GPU found (a token outside
        the model's map, a layer loaded again with another model)."""
        return self.device_token_lookups(layer_ids, tokens, out,
                                         history=history, stream=stream,
                                         status=status).launch()

    def prepare_device(self, layer_id: int, device: int = -1) -> str:
        """Sets up device lookups of a layer now (the first lookup_device
        would) and returns the path they take: "gpu-shared",
        "host-mapped" or "rpc" (:meth:`device_path_note` says why)."""
        return _call(self._c.prepare_device, int(layer_id), int(device))

    def device_path_note(self, layer_id: int, device: int = -1) -> str:
        return self._c.device_path_note(int(layer_id), int(device))

    def remove(self, layer_id: int, force: bool = False) -> int:
        """Removes a layer; returns how many tables went (0 when ``force``
        aborted a populate in progress)."""
        self._layouts.pop(layer_id, None)
        return _call(self._c.remove, int(layer_id), bool(force))

    def describe(self, layer_id: int) -> LayerInfo:
        return _info(_call(self._c.describe, int(layer_id)))

    def list_layers(self) -> List[LayerInfo]:
        return [_info(d) for d in _call(self._c.list_layers)]

    def load(self, manifest_path: str) -> List[LayerInfo]:
        """Has the server load a load manifest (docs/tables.md) from files
        under its --load_root."""
        return [_info(d) for d in _call(self._c.load, str(manifest_path))]

    def health(self, service: str = "") -> bool:
        """True while the server (or ``service``) is SERVING."""
        return _call(self._c.health, service)

    def close(self) -> None:
        """Drops the connection (calls in flight finish first)."""
        self._c = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
