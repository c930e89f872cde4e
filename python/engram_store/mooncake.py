"""A drop-in for Mooncake's EngramStore Python surface, backed by
engram-store: code written against ``EngramStore(layer_id, config,
store=...)`` runs unchanged with an :class:`engram_store.Client` as the
store. float32 tables, create-only populate, the same validation."""
from typing import List, Optional, Sequence

import numpy as np


class EngramStoreConfig:
    """The physical layout of one layer: rows per head and the row width."""

    def __init__(self, table_vocab_sizes: Sequence[int], embedding_dim: int):
        sizes = [int(n) for n in table_vocab_sizes]
        if not sizes or any(n <= 0 for n in sizes):
            raise ValueError("table_vocab_sizes must be non-empty and every "
                             f"entry positive; got {list(table_vocab_sizes)}")
        if int(embedding_dim) <= 0:
            raise ValueError(
                f"embedding_dim must be positive; got {embedding_dim}")
        self.table_vocab_sizes = sizes
        self.embedding_dim = int(embedding_dim)


class EngramStore:
    """One Engram layer in engram-store (``store``: an
    :class:`engram_store.Client`, or None for metadata only)."""

    def __init__(self, layer_id: int, config: EngramStoreConfig, store=None):
        self._layer_id = int(layer_id)
        self._config = config
        self._store = store

    def _client(self):
        if self._store is None:
            raise RuntimeError("this EngramStore was built without a store "
                               "(metadata only)")
        return self._store

    def populate(self, embedding_buffers: Sequence[np.ndarray]) -> None:
        """Creates the layer from one float32 ``[N_h, D]`` array per head.
        Create-only: remove_from_store() first to reuse the layer id."""
        sizes, dim = self._config.table_vocab_sizes, self._config.embedding_dim
        if len(embedding_buffers) != len(sizes):
            raise ValueError(f"populate needs exactly one table per head: "
                             f"{len(sizes)} heads, {len(embedding_buffers)} "
                             "tables")
        tables = []
        for h, t in enumerate(embedding_buffers):
            a = np.asarray(t)
            if a.dtype != np.float32:
                raise TypeError(f"table {h} is {a.dtype}; EngramStore tables "
                                "are float32")
            if a.shape != (sizes[h], dim):
                raise ValueError(f"table {h} has shape {a.shape}; head {h} "
                                 f"needs [{sizes[h]}, {dim}]")
            tables.append(np.ascontiguousarray(a))
        self._client().populate(self._layer_id, tables)

    def lookup(self, row_ids) -> np.ndarray:
        """Rows for ``row_ids`` (int64 ``[B, L, H]``: numpy or nested lists)
        as float32 ``[B, L, H, D]``."""
        ids = np.asarray(row_ids, dtype=np.int64) \
            if not isinstance(row_ids, np.ndarray) else row_ids
        if ids.ndim != 3 or ids.size == 0:
            raise ValueError(f"row_ids must be a non-empty [B, L, H]; got "
                             f"shape {ids.shape}")
        sizes = self._config.table_vocab_sizes
        if ids.shape[2] != len(sizes):
            raise ValueError(f"row_ids has H = {ids.shape[2]}; the layer has "
                             f"{len(sizes)} heads")
        bounds = np.asarray(sizes, dtype=np.int64)
        bad = (ids < 0) | (ids >= bounds)
        if bad.any():
            b, l, h = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(f"row_ids[{b}, {l}, {h}] = {int(ids[b, l, h])} "
                             f"is outside head {h}'s [0, {sizes[h]})")
        out = np.empty(ids.shape + (self._config.embedding_dim,),
                       dtype=np.float32)
        return self._client().lookup(self._layer_id, ids, out=out,
                                     output_dtype="float32")

    def remove_from_store(self, force: bool = False) -> int:
        return self._client().remove(self._layer_id, force)

    def get_table_vocab_sizes(self) -> List[int]:
        return list(self._config.table_vocab_sizes)

    def get_store_keys(self) -> List[str]:
        return [f"engram:l{self._layer_id}:h{h}"
                for h in range(len(self._config.table_vocab_sizes))]

    def get_num_heads(self) -> int:
        return len(self._config.table_vocab_sizes)

    def get_embedding_dim(self) -> int:
        return self._config.embedding_dim
