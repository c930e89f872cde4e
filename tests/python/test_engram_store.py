"""The engram_store Python package against real engramd processes.

Run by ctest (python_package_test) with PYTHONPATH at build/python and
ENGRAM_TEST_ENGRAMD naming the engramd binary.
"""
import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import engram_store
from engram_store import (AlreadyExistsError, EngramStore, EngramStoreConfig,
                          Error, InvalidArgumentError, NotFoundError,
                          UnavailableError)

ENGRAMD = os.environ.get("ENGRAM_TEST_ENGRAMD", "build/server/engramd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engramd:
    """One engramd on loopback; stopped (and reaped) by stop()."""

    def __init__(self, *flags, port=None, wait=True):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [ENGRAMD, f"--listen={self.address}", "--metrics_listen=",
             *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait()

    def wait(self):
        """Until it is SERVING (a cluster shard: once every shard is up)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if engram_store.Client(self.address, timeout_s=1).health():
                    return
            except Error:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"engramd on {self.address} did not start")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


class Cluster:
    """Three engramd shards on loopback (R = 2) as one cluster: ``shards``,
    their ``addresses``; a context manager that stops them all."""

    def __init__(self, shards=3, replication=2, flags=()):
        ports = [free_port() for _ in range(shards)]
        peers = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.addresses = [f"127.0.0.1:{p}" for p in ports]
        self.replication = replication
        self.shards = [Engramd(f"--peers={peers}", f"--shard_index={i}",
                               f"--replication={replication}", *flags,
                               port=ports[i], wait=False)
                       for i in range(shards)]
        try:
            for s in self.shards:
                s.wait()
        except Exception:
            self.stop()
            raise

    def routed_client(self):
        return engram_store.Client.cluster(self.addresses, self.replication)

    def stop(self):
        for s in self.shards:
            s.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def server():
    s = Engramd()
    yield s
    s.stop()


def random_tables(sizes, dim, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return [rng.integers(0, 256, (n, dim), dtype=np.uint8) for n in sizes]
    if dtype == np.uint16:  # bfloat16 bits of finite values
        return [(rng.standard_normal((n, dim), dtype=np.float32)
                 .view(np.uint32) >> 16).astype(np.uint16) for n in sizes]
    return [rng.standard_normal((n, dim)).astype(dtype) for n in sizes]


def reference(tables, ids):
    """rows[b, l, h] = tables[h][ids[b, l, h]], by numpy indexing."""
    heads = [tables[h][ids[..., h]] for h in range(len(tables))]
    return np.stack(heads, axis=2)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (finite values)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


def random_ids(sizes, b, l, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, (b, l)) for n in sizes],
                    axis=2).astype(np.int64)


SIZES = [1009, 13, 997]


@pytest.mark.parametrize("dtype,name", [(np.float32, None),
                                        (np.float16, None),
                                        (np.uint8, None),
                                        (np.uint16, "bfloat16")])
def test_every_dtype_is_bit_identical_to_numpy(server, dtype, name):
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 24, dtype, 1)
    info = c.populate(7, tables, dtype=name)
    assert info.dtype == (name or np.dtype(dtype).name)
    assert info.num_heads == 3 and info.version == 1
    ids = random_ids(SIZES, 4, 5, 2)
    got = c.lookup(7, ids)
    want = reference(tables, ids)
    assert got.dtype == want.dtype and got.shape == (4, 5, 3, 24)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    # Nested lists are accepted as ids.
    assert np.array_equal(c.lookup(7, ids.tolist()), got)


def test_float_conversions_match_numpy(server):
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 16, np.float32, 3)
    c.populate(1, tables)
    ids = random_ids(SIZES, 2, 3, 4)
    want = reference(tables, ids)
    half = c.lookup(1, ids, output_dtype="float16")
    assert half.dtype == np.float16
    assert np.array_equal(half.view(np.uint16),
                          want.astype(np.float16).view(np.uint16))
    bf16 = c.lookup(1, ids, output_dtype="bfloat16")
    assert np.array_equal(bf16, to_bfloat16_bits(want))


def test_out_is_written_in_place(server):
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 8, np.float32, 5)
    c.populate(2, tables)
    ids = random_ids(SIZES, 3, 2, 6)
    out = np.zeros((3, 2, 3, 8), dtype=np.float32)
    address = out.__array_interface__["data"][0]
    result = c.lookup(2, ids, out=out)
    assert result is out
    assert out.__array_interface__["data"][0] == address
    assert np.array_equal(out, reference(tables, ids))
    with pytest.raises(ValueError):
        c.lookup(2, ids, out=np.zeros((3, 2, 3, 8), np.float32)[:, ::-1])
    with pytest.raises(ValueError):
        c.lookup(2, ids, out=np.zeros((3, 2, 3, 9), np.float32)[..., :8])
    with pytest.raises(TypeError):
        c.lookup(2, ids, out=np.zeros((3, 2, 3, 8), np.float16),
                 output_dtype="float32")
    # Without output_dtype the layer's rows decide, checked before the call
    # (these were sent, and failed on the byte count afterwards).
    with pytest.raises(TypeError) as e:
        c.lookup(2, ids, out=np.zeros((3, 2, 3, 8), np.float16))
    assert "layer 2's rows are float32" in str(e.value)
    with pytest.raises(ValueError) as e:
        c.lookup(2, ids, out=np.zeros((3, 2, 3, 7), np.float32))
    assert "out's rows have 7 values; layer 2's float32 rows have 8" in \
        str(e.value)
    assert np.array_equal(out, reference(tables, ids))  # untouched


def test_lookup_follows_a_layer_another_client_changed(server):
    # lookup() without out= caches each layer's D and dtype; a layer
    # removed and re-created, or replaced, by someone else is asked again.
    mine = engram_store.Client(server.address)
    other = engram_store.Client(server.address)
    other.populate(4, random_tables(SIZES, 8, np.float32, 11))
    ids = random_ids(SIZES, 2, 2, 12)
    assert mine.lookup(4, ids).shape == (2, 2, 3, 8)
    other.remove(4)
    half = random_tables(SIZES, 12, np.float16, 13)
    other.populate(4, half)
    got = mine.lookup(4, ids)
    assert got.dtype == np.float16 and np.array_equal(got,
                                                      reference(half, ids))
    # Same row bytes, other dtype: never uint8 rows labelled float16.
    raw = random_tables(SIZES, 24, np.uint8, 14)
    other.populate(4, raw, replace=True)
    got = mine.lookup(4, ids)
    assert got.dtype == np.uint8 and np.array_equal(got, reference(raw, ids))
    other.remove(4)
    with pytest.raises(NotFoundError):
        mine.lookup(4, ids)
    with pytest.raises(NotFoundError):
        mine.lookup_async(4, ids).result(timeout=30)


def test_async_lookups_and_asyncio(server):
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 8, np.float32, 7)
    c.populate(3, tables)
    all_ids = [random_ids(SIZES, 2, 4, s) for s in range(16)]
    futures = [c.lookup_async(3, ids) for ids in all_ids]
    for ids, f in zip(all_ids, futures):
        assert np.array_equal(f.result(timeout=30), reference(tables, ids))

    async def prefetch():
        return await asyncio.wrap_future(c.lookup_async(3, all_ids[0]))
    assert np.array_equal(asyncio.run(prefetch()),
                          reference(tables, all_ids[0]))
    with pytest.raises(NotFoundError):
        c.lookup_async(99, all_ids[0], out=np.empty((2, 4, 3, 8),
                                                    np.float32)).result(30)


def test_futures_work_with_every_waiting_style(server):
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 8, np.float32, 15)
    c.populate(3, tables)
    ids = [random_ids(SIZES, 3, 2, s) for s in range(8)]
    want = [reference(tables, i) for i in ids]
    futures = [c.lookup_async(3, i) for i in ids]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 8 and all(f.done() for f in futures)
    futures = {c.lookup_async(3, i): k for k, i in enumerate(ids)}
    for f in concurrent.futures.as_completed(futures, timeout=30):
        assert np.array_equal(f.result(), want[futures[f]])
    # A callback added before or after completion runs exactly once.
    called = []
    f = c.lookup_async(3, ids[0])
    f.add_done_callback(lambda g: called.append(g.result()))
    f.result(timeout=30)
    f.add_done_callback(lambda g: called.append(g.result()))
    deadline = time.time() + 30
    while len(called) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert len(called) == 2 and all(np.array_equal(r, want[0])
                                    for r in called)
    assert not f.cancel() and f.exception() is None
    # Futures dropped at once: the call keeps ids and out alive itself.
    for k in range(20):
        c.lookup_async(3, random_ids(SIZES, 64, 8, k))
    assert np.array_equal(c.lookup(3, ids[1]), want[1])


def test_a_prefetch_completes_while_python_holds_the_gil(server):
    # Regression: completions used to take the GIL, so a prefetch waited
    # for the thread computing in Python to give it up (up to the switch
    # interval, 5 ms by default) and stole it from that thread.
    c = engram_store.Client(server.address)
    tables = random_tables(SIZES, 8, np.float32, 16)
    c.populate(3, tables)
    ids = random_ids(SIZES, 4, 4, 17)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # this thread keeps the GIL while it spins
    try:
        f = c.lookup_async(3, ids)
        start = time.perf_counter()
        while not f.done() and time.perf_counter() - start < 2.0:
            pass
        spun = time.perf_counter() - start
    finally:
        sys.setswitchinterval(interval)
    assert f.done(), f"not complete after {spun:.2f} s of Python holding the GIL"
    assert np.array_equal(f.result(), reference(tables, ids))


def test_eight_threads_look_up_at_once(server):
    c = engram_store.Client(server.address, num_channels=2)
    tables = random_tables(SIZES, 32, np.float32, 8)
    c.populate(4, tables)
    errors = []

    def worker(seed):
        for i in range(20):
            ids = random_ids(SIZES, 16, 8, seed * 100 + i)
            if not np.array_equal(c.lookup(4, ids), reference(tables, ids)):
                errors.append(seed)
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_errors_have_classes_and_messages(server):
    c = engram_store.Client(server.address)
    with pytest.raises(NotFoundError, match="layer 42 not found"):
        c.describe(42)
    tables = random_tables([10], 4, np.float32, 9)
    c.populate(5, tables)
    with pytest.raises(AlreadyExistsError):
        c.populate(5, tables)
    with pytest.raises(InvalidArgumentError, match="row_ids"):
        c.lookup(5, np.array([[[10]]]))
    assert isinstance(InvalidArgumentError("x"), ValueError)
    # Caught before anything is sent.
    with pytest.raises(ValueError):
        c.lookup(5, np.array([1, 2, 3]))
    with pytest.raises(TypeError):
        c.lookup(5, np.array([[[1.5]]]))
    with pytest.raises(ValueError):
        c.populate(6, [np.zeros(4, np.float32)])
    with pytest.raises(TypeError):
        c.populate(6, [np.zeros((4, 2), np.int32)])
    # Replace makes a new version; remove and list.
    assert c.populate(5, tables, replace=True).version == 2
    assert [i.layer_id for i in c.list_layers()] == [5]
    assert c.remove(5) == 1
    assert c.list_layers() == []


def test_mooncake_engram_store_surface(server):
    c = engram_store.Client(server.address)
    config = EngramStoreConfig([100, 7, 31], 16)
    store = EngramStore(11, config, store=c)
    assert store.get_store_keys() == ["engram:l11:h0", "engram:l11:h1",
                                      "engram:l11:h2"]
    assert store.get_num_heads() == 3 and store.get_embedding_dim() == 16
    assert store.get_table_vocab_sizes() == [100, 7, 31]
    tables = random_tables([100, 7, 31], 16, np.float32, 10)
    store.populate(tables)
    ids = random_ids([100, 7, 31], 2, 3, 11)
    rows = store.lookup(ids.tolist())
    assert rows.dtype == np.float32 and rows.shape == (2, 3, 3, 16)
    assert np.array_equal(rows, reference(tables, ids))
    with pytest.raises(AlreadyExistsError):
        store.populate(tables)
    with pytest.raises(ValueError):
        store.populate(tables[:2])
    with pytest.raises(ValueError):
        store.populate([tables[0], tables[2], tables[1]])
    with pytest.raises(ValueError):
        store.lookup([[[100, 0, 0]]])
    with pytest.raises(ValueError):
        store.lookup(np.zeros((0, 1, 3), np.int64))
    with pytest.raises(ValueError):
        EngramStoreConfig([], 4)
    with pytest.raises(ValueError):
        EngramStoreConfig([3], 0)
    assert store.remove_from_store() == 3
    assert EngramStore(1, config).get_num_heads() == 3  # metadata only


def test_a_killed_server_gives_unavailable_without_hanging():
    s = Engramd()
    c = engram_store.Client(s.address, timeout_s=3)
    c.populate(1, random_tables([50], 4, np.float32, 12))
    s.stop(signal.SIGKILL)
    start = time.time()
    with pytest.raises(UnavailableError):
        c.lookup(1, np.zeros((1, 1, 1), np.int64))
    assert time.time() - start < 10


def test_interpreter_exit_with_calls_in_flight(server):
    c = engram_store.Client(server.address)
    c.populate(1, random_tables([5000], 64, np.float32, 13))
    script = (
        "import numpy as np, engram_store\n"
        f"c = engram_store.Client('{server.address}')\n"
        "ids = np.zeros((64, 64, 1), np.int64)\n"
        "fs = [c.lookup_async(1, ids) for _ in range(50)]\n")
    done = subprocess.run([sys.executable, "-c", script], timeout=60,
                          capture_output=True)
    assert done.returncode == 0, done.stderr


def test_cluster_client_routes_lookups():
    with Cluster() as cluster:
        c = cluster.routed_client()
        tables = random_tables(SIZES, 16, np.float32, 14)
        c.populate(8, tables)
        ids = random_ids(SIZES, 8, 4, 15)
        assert np.array_equal(c.lookup(8, ids), reference(tables, ids))


def test_command_line(server):
    env = dict(os.environ)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "engram_store", f"--address={server.address}",
         *a], capture_output=True, text=True, env=env, timeout=60)
    assert run("health").stdout.strip() == "SERVING"
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/h0.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
        out = run("populate", "3", f"{d}/h0.npy")
        assert out.returncode == 0, out.stderr
    out = run("lookup", "3", "2")
    assert "[8.0, 9.0, 10.0, 11.0]" in out.stdout
    out = run("describe", "9")
    assert out.returncode == 1 and "NotFoundError" in out.stderr


def test_prefetch_example_runs_and_its_rows_are_right():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "python",
                           "examples", "prefetch_loop.py")
    done = subprocess.run(
        [sys.executable, example, f"--engramd={ENGRAMD}", "--layers=3",
         "--steps=2", "--rounds=1", "--rows=1000", "--batch=4", "--check"],
        timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "prefetched rows of 3 layers identical" in done.stdout


def test_tokens_and_roles():
    with tempfile.TemporaryDirectory() as d:
        tokens = os.path.join(d, "tokens")
        with open(tokens, "w") as f:
            f.write("read reader read-token-0123456789\n"
                    "write writer write-token-0123456789\n")
        s = Engramd(f"--tokens_file={tokens}", "--demo", wait=False)
        try:
            reader = engram_store.Client(s.address,
                                         token="read-token-0123456789")
            deadline = time.time() + 30
            while not reader.health() and time.time() < deadline:
                time.sleep(0.05)
            rows = reader.lookup(0, [[[5, 6, 7, 8]]])
            assert rows[0, 0, 1, 0] == 100006.0
            with pytest.raises(engram_store.PermissionDeniedError,
                               match="role read may not call Remove"):
                reader.remove(0)
            with pytest.raises(engram_store.UnauthenticatedError):
                engram_store.Client(s.address).list_layers()
            writer = engram_store.Client(s.address,
                                         token="write-token-0123456789")
            assert writer.remove(0) == 4
            with pytest.raises(TypeError):
                engram_store.Client.cluster([s.address], 1, tokn="x")
        finally:
            s.stop()


def test_version_and_server_info(server):
    """The package, engramd and the ServerInfo call agree on one version."""
    info = engram_store.Client(server.address).server_info()
    assert info["version"] == engram_store.__version__
    assert engram_store.__version__.startswith("0.")
    assert info["shards"] == 0 and info["layers"] == 0
    assert info["uptime_seconds"] >= 0


def test_status(server):
    """Client.status(): readiness, calls, latency, layers and process, as
    the Status RPC reports them."""
    c = engram_store.Client(server.address)
    rows = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    c.populate(31, [rows, rows])
    c.lookup(31, np.array([[[1, 2]]], dtype=np.int64))
    with pytest.raises(engram_store.InvalidArgumentError):
        c.lookup(31, np.array([[[1, 99]]], dtype=np.int64))
    s = c.status()
    assert s["ready"] and s["not_ready_reason"] == ""
    assert s["version"] == engram_store.__version__
    assert s["calls"]["Lookup"] == {"calls": 2, "errors": 1}
    assert s["lookup_latency"]["count"] == 1
    assert 0 < s["lookup_latency"]["p99_seconds"] < 10
    layer = [l for l in s["layers"] if l["layer_id"] == 31][0]
    assert layer["bytes"] == 2 * rows.nbytes and layer["version"] == 1
    assert s["memory_used_bytes"] >= 2 * rows.nbytes
    assert s["process"]["resident_bytes"] > 0 and s["loads"] == []
    c.remove(31)
