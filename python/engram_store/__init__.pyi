import concurrent.futures
from typing import Callable, List, Optional, Sequence

import numpy as np

from engram_store.errors import (AbortedError, AlreadyExistsError,
                                 CancelledError, DataLossError,
                                 DeadlineExceededError, Error,
                                 FailedPreconditionError, InternalError,
                                 InvalidArgumentError, NotFoundError,
                                 OutOfRangeError, PermissionDeniedError,
                                 ResourceExhaustedError, UnauthenticatedError,
                                 UnavailableError, UnimplementedError,
                                 UnknownError)
from engram_store.mooncake import EngramStore, EngramStoreConfig

class LookupFuture(concurrent.futures.Future[np.ndarray]):
    """Completes without the GIL; result() waits with it released."""
    def result(self, timeout: Optional[float] = ...) -> np.ndarray: ...

class DeviceLookup:
    path: str
    def result(self) -> object: ...

class LayerInfo:
    layer_id: int
    table_vocab_sizes: List[int]
    embedding_dim: int
    dtype: str
    store_keys: List[str]
    bytes: int
    version: int
    @property
    def num_heads(self) -> int: ...

class Client:
    def __init__(self, address: str, *, timeout_s: float = ...,
                 num_channels: int = ..., direct_reads: bool = ...,
                 token: Optional[str] = ..., tls: bool = ...,
                 tls_ca_file: Optional[str] = ...,
                 tls_cert_file: Optional[str] = ...,
                 tls_key_file: Optional[str] = ...,
                 tls_server_name: Optional[str] = ...) -> None: ...
    @classmethod
    def cluster(cls, addresses: Sequence[str], replication: int, *,
                timeout_s: float = ..., num_channels: int = ...,
                direct_reads: bool = ..., token: Optional[str] = ...,
                tls: bool = ..., tls_ca_file: Optional[str] = ...,
                tls_cert_file: Optional[str] = ...,
                tls_key_file: Optional[str] = ...,
                tls_server_name: Optional[str] = ...) -> Client: ...
    def populate(self, layer_id: int, tables: Sequence[np.ndarray], *,
                 dtype: Optional[str] = ..., replace: bool = ...,
                 progress: Optional[Callable[[int, int], None]] = ...
                 ) -> LayerInfo: ...
    def lookup(self, layer_id: int, ids: object, *,
               out: Optional[object] = ...,
               output_dtype: Optional[str] = ...) -> object: ...
    def lookup_async(self, layer_id: int, ids: object, *,
                     out: Optional[np.ndarray] = ...,
                     output_dtype: Optional[str] = ...
                     ) -> LookupFuture: ...
    def lookup_device(self, layer_id: int, ids: object, out: object, *,
                      stream: object = ..., status: object = ...
                      ) -> DeviceLookup: ...
    def prepare_device(self, layer_id: int, device: int = ...) -> str: ...
    def device_path_note(self, layer_id: int, device: int = ...) -> str: ...
    def remove(self, layer_id: int, force: bool = ...) -> int: ...
    def describe(self, layer_id: int) -> LayerInfo: ...
    def list_layers(self) -> List[LayerInfo]: ...
    def load(self, manifest_path: str) -> List[LayerInfo]: ...
    def health(self, service: str = ...) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(self, *exc: object) -> None: ...
