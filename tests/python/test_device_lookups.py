"""Device lookups from Python (Client.lookup_device, engram_store.cuda).

The CUDA-array parsing and the refusals run everywhere; the lookups into
GPU memory run where libcudart finds a device (the array type here is a
ctypes wrapper over cudaMalloc, so no framework is needed).
"""
import ctypes
import ctypes.util

import numpy as np
import pytest

import engram_store
from engram_store import InvalidArgumentError, _engram_store, cuda

from test_engram_store import Engramd, random_tables


class HostBackedCai:
    """Claims to be a CUDA array but points at host memory."""

    def __init__(self, array, strides=None):
        self.array = array
        self.__cuda_array_interface__ = {
            "shape": array.shape, "typestr": array.dtype.str,
            "data": (array.ctypes.data, False), "strides": strides,
            "version": 3}


class LyingDlpack:
    """A CPU DLPack tensor that says it is on a CUDA device."""

    def __init__(self, array):
        self.array = array

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice),
                ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class TorchBfloat16Like:
    """What a CUDA torch.bfloat16 tensor exposes: __cuda_array_interface__
    with typestr '<V2' (no bfloat16 in that interface) and a __dlpack__ that
    reports bfloat16 (DLPack code 4, 16 bits) on a CUDA device."""

    def __init__(self, shape, ptr=0x7f0000000000, device=0):
        self.shape = tuple(shape)
        self.ptr = ptr
        self.device = device
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": "<V2", "data": (ptr, False),
            "strides": None, "version": 2}

    def __dlpack_device__(self):
        return (2, self.device)

    def __dlpack__(self, stream=None):
        self._shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
        self._managed = _DLManagedTensor()
        t = self._managed.dl_tensor
        t.data = self.ptr
        t.device = _DLDevice(2, self.device)
        t.ndim = len(self.shape)
        t.dtype = _DLDataType(4, 16, 1)
        t.shape = self._shape
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self._managed), b"dltensor", None)


def test_a_torch_bfloat16_out_is_read_through_dlpack():
    # Issue: '<V2' from __cuda_array_interface__ was refused before DLPack
    # was asked, so a torch.bfloat16 out (the docs' own example) failed.
    out = TorchBfloat16Like((2, 1, 4, 8))
    parsed = cuda.device_array(out, "out")
    assert parsed == cuda.DeviceArray(0x7f0000000000, (2, 1, 4, 8),
                                      "bfloat16", 0)
    assert parsed.nbytes == 2 * 4 * 8 * 2

    class VoidOnly:  # a 2-byte void with nothing to say what it is
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<V2",
                                    "data": (0x7f0000000000, False),
                                    "version": 2}

    with pytest.raises(TypeError, match="element type '<V2'"):
        cuda.device_array(VoidOnly(), "out")


def test_cuda_arrays_are_parsed_and_checked():
    a = np.zeros((2, 3, 4, 8), dtype=np.float16)
    parsed = cuda.device_array(HostBackedCai(a), "out")
    assert parsed == cuda.DeviceArray(a.ctypes.data, (2, 3, 4, 8), "float16",
                                      -1)
    assert parsed.nbytes == a.nbytes
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.device_array(HostBackedCai(a, strides=(2, 16, 64, 512)), "out")
    with pytest.raises(TypeError, match="element type"):
        cuda.device_array(HostBackedCai(a.astype(np.complex64)), "out")
    assert cuda.device_array(a) is None  # a NumPy array is host memory
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    info = _engram_store.dlpack_info(ids.__dlpack__())
    assert info["ptr"] == ids.ctypes.data
    assert info["shape"] == [2, 3]
    assert (info["device_type"], info["code"], info["bits"]) == (1, 0, 64)
    with pytest.raises(TypeError, match="not CUDA memory"):
        cuda.device_array(LyingDlpack(ids), "ids")
    assert cuda.stream_handle(None) == 0
    assert cuda.stream_handle(77) == 77

    class TorchLikeStream:
        cuda_stream = 1234

    assert cuda.stream_handle(TorchLikeStream()) == 1234
    with pytest.raises(TypeError, match="stream"):
        cuda.stream_handle("default")


def test_lookup_device_refuses_what_is_not_device_memory():
    server = Engramd("--direct_reads")
    try:
        client = engram_store.Client(server.address)
        client.populate(1, random_tables([100, 50], 8, np.float32, 1))
        ids = np.zeros((1, 1, 2), dtype=np.int64)
        host = np.zeros((1, 1, 2, 8), dtype=np.float32)
        with pytest.raises(InvalidArgumentError, match="device memory"):
            client.lookup_device(1, ids, HostBackedCai(host))
        with pytest.raises(InvalidArgumentError, match="device memory"):
            client.lookup(1, ids, out=HostBackedCai(host))
        with pytest.raises(TypeError, match="CUDA array"):
            client.lookup_device(1, ids, host)
        with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
            client.lookup_device(
                1, ids, HostBackedCai(np.zeros((1, 2, 8), np.float32)))
        assert client.health()  # the server lives on
    finally:
        server.stop()


def test_device_lookups_are_checked_when_made():
    server = Engramd("--direct_reads")
    try:
        client = engram_store.Client(server.address)
        client.populate(1, random_tables([100, 50], 8, np.float32, 1))
        client.populate(2, random_tables([100, 50], 8, np.float32, 2))
        ids = np.zeros((1, 1, 2), dtype=np.int64)
        host = np.zeros((1, 1, 2, 8), dtype=np.float32)
        with pytest.raises(ValueError, match="no lookups"):
            client.device_lookups([])
        with pytest.raises(ValueError, match=r"\(layer_id, ids, out\)"):
            client.device_lookups([(1, ids)])
        with pytest.raises(TypeError, match="CUDA array"):
            client.device_lookups([(1, ids, host)])
        with pytest.raises(TypeError, match="integers"):
            client.device_lookups([(1, ids.astype(np.float32),
                                    HostBackedCai(host))])
        # The status words grew from two to three: two are refused.
        assert cuda.STATUS_WORDS == 3
        with pytest.raises(TypeError, match="3 \\(u\\)int64"):
            client.lookup_device(1, ids, HostBackedCai(host),
                                 status=HostBackedCai(np.zeros(2, np.uint64)))
        # Made without a launch; the launch names the lookup it refuses.
        plan = client.device_lookups(
            [(1, ids, HostBackedCai(host)), (2, ids, HostBackedCai(host))])
        with pytest.raises(InvalidArgumentError, match="lookup 0: .*device"):
            plan.launch()
        assert client.health()
    finally:
        server.stop()


def test_device_id_forms_are_checked_when_made():
    server = Engramd("--direct_reads")
    try:
        client = engram_store.Client(server.address)
        client.populate(1, random_tables([100, 50], 8, np.float32, 1))
        entries = np.zeros(4, dtype=np.int64)
        rows = HostBackedCai(np.zeros((4, 8), np.float32))
        with pytest.raises(ValueError, match="id_form must be"):
            client.lookup_device(1, entries, rows, id_form="packed")
        with pytest.raises(ValueError, match=r"entries ids must be \[n\]"):
            client.lookup_device(1, entries.reshape(2, 1, 2), rows,
                                 id_form="entries")
        with pytest.raises(ValueError, match=r"need \[n, D\]"):
            client.lookup_device(
                1, entries, HostBackedCai(np.zeros((3, 8), np.float32)),
                id_form="entries")
        # Well-formed: checked by the launch like any other lookup.
        with pytest.raises(InvalidArgumentError, match="device memory"):
            client.lookup_device(1, entries, rows, id_form="entries")
        with pytest.raises(InvalidArgumentError, match="device memory"):
            client.lookup_device(
                1, np.zeros((1, 1, 1), np.int64),
                HostBackedCai(np.zeros((1, 1, 1, 8), np.float32)),
                id_form="fused", heads=(1, 2))
        assert client.health()
    finally:
        server.stop()


def test_device_token_lookups_are_checked_when_made():
    server = Engramd("--direct_reads")
    try:
        client = engram_store.Client(server.address)
        client.populate(1, random_tables([100, 50], 8, np.float32, 1))
        tokens = np.zeros((2, 3), dtype=np.int64)
        out = HostBackedCai(np.zeros((2, 3, 2, 8), np.float32))
        with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
            client.device_token_lookups(1, tokens[0], out)
        with pytest.raises(ValueError, match=r"history must be \[B = 2, h\]"):
            client.device_token_lookups(1, tokens, out,
                                        history=np.zeros((3, 1), np.int64))
        with pytest.raises(TypeError, match="tokens must be integers"):
            client.device_token_lookups(1, tokens.astype(np.float32), out)
        with pytest.raises(ValueError, match="2 arrays for 1 layers"):
            client.device_token_lookups([1], tokens, [out, out])
        with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
            client.device_token_lookups(
                1, tokens, HostBackedCai(np.zeros((2, 4, 2, 8), np.float32)))
        with pytest.raises(TypeError, match="CUDA array"):
            client.device_token_lookups(1, tokens, np.zeros((2, 3, 2, 8)))
        # Made without a launch; the launch refuses host memory as out.
        plan = client.device_token_lookups([1], tokens, [out])
        with pytest.raises(InvalidArgumentError, match="device memory"):
            plan.launch()
        assert client.health()
    finally:
        server.stop()


def _cudart():
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12",
                 ctypes.util.find_library("cudart")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value:
            return lib
    return None


CUDART = _cudart()


class CudaBuffer:
    """cudaMalloc'd memory with __cuda_array_interface__ (tests only)."""

    def __init__(self, shape, dtype):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = ctypes.c_void_p()
        assert CUDART.cudaMalloc(ctypes.byref(self.ptr), self.nbytes) == 0
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": self.dtype.str,
            "data": (self.ptr.value, False), "version": 3}

    def write(self, array):
        array = np.ascontiguousarray(array, dtype=self.dtype)
        assert CUDART.cudaMemcpy(self.ptr, array.ctypes.data_as(
            ctypes.c_void_p), self.nbytes, 1) == 0

    def read(self):
        host = np.empty(self.shape, dtype=self.dtype)
        assert CUDART.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p),
                                 self.ptr, self.nbytes, 2) == 0
        return host

    def __del__(self):
        CUDART.cudaFree(self.ptr)


@pytest.mark.skipif(CUDART is None, reason="no CUDA device")
@pytest.mark.parametrize("flags,path", [
    (("--direct_reads", "--gpu=0"), "gpu-shared"),
    (("--direct_reads",), "host-mapped"),
    ((), "rpc")])
def test_lookup_device_matches_the_host_lookup(flags, path):
    server = Engramd(*flags)
    try:
        client = engram_store.Client(server.address)
        tables = random_tables([4000, 3000, 2000], 64, np.uint16, 2)
        client.populate(3, tables, dtype="bfloat16")
        assert client.prepare_device(3) == path, client.device_path_note(3)
        rng = np.random.default_rng(3)
        ids = np.stack([rng.integers(0, n, (16, 2)) for n in
                        (4000, 3000, 2000)], axis=-1).astype(np.int64)
        for out_dtype, np_dtype in (("bfloat16", np.uint16),
                                    ("float32", np.float32),
                                    ("float16", np.float16)):
            want = client.lookup(3, ids, output_dtype=out_dtype)
            out = CudaBuffer(want.shape, np_dtype)
            out.write(np.full(want.shape, 0x5A, dtype=np_dtype))
            call = client.lookup_device(3, ids, out)
            assert call.path == path
            call.result()
            assert np.array_equal(out.read().view(np.uint8),
                                  want.view(np.uint8)), out_dtype
        # ids on the GPU, through the synchronous lookup().
        device_ids = CudaBuffer(ids.shape, np.int64)
        device_ids.write(ids)
        out = CudaBuffer(ids.shape + (64,), np.float32)
        client.lookup(3, device_ids, out=out)
        assert np.array_equal(out.read(),
                              client.lookup(3, ids, output_dtype="float32"))
        bad = ids.copy()
        bad[0, 0, 2] = 2000
        with pytest.raises(InvalidArgumentError):
            client.lookup_device(3, bad, out).result()
    finally:
        server.stop()


@pytest.mark.skipif(CUDART is None, reason="no CUDA device")
@pytest.mark.parametrize("flags,path", [
    (("--direct_reads", "--gpu=0"), "gpu-shared"),
    (("--direct_reads",), "host-mapped"),
    ((), "rpc")])
def test_device_lookups_of_two_layers_launch_together(flags, path):
    server = Engramd(*flags)
    try:
        client = engram_store.Client(server.address)
        layers = {5: random_tables([3000, 2000], 264, np.uint8, 5),
                  6: random_tables([1000, 4000], 264, np.uint8, 6)}
        for layer_id, tables in layers.items():
            client.populate(layer_id, tables)
        rng = np.random.default_rng(5)
        lookups, wants, ids_buffers = [], [], []
        for layer_id in layers:
            ids = np.stack([rng.integers(0, n, (4, 1)) for n in
                            (1000, 2000)], axis=-1).astype(np.int64)
            device_ids = CudaBuffer(ids.shape, np.int64)
            device_ids.write(ids)
            ids_buffers.append((device_ids, ids))
            want = client.lookup(layer_id, ids)
            out = CudaBuffer(want.shape, np.uint8)
            lookups.append((layer_id, device_ids, out))
            wants.append(want)
        step = client.device_lookups(lookups)
        for _ in range(3):  # one plan, launched at every step
            for _, _, out in lookups:
                out.write(np.zeros(out.shape, np.uint8))
            step.launch()
            assert step.paths == [path, path]
            for out, want in zip(step.result(), wants):
                assert np.array_equal(out.read(), want)
        # New ids in the same buffers: the next launch reads them.
        device_ids, ids = ids_buffers[0]
        device_ids.write(ids[::-1].copy())
        step.launch()
        assert np.array_equal(step.result()[0].read(),
                              client.lookup(5, ids[::-1].copy()))
    finally:
        server.stop()
