"""Quantized (FP8 E4M3 weights, UE8M0 block scales) layers through the
Python package against real engramd processes: every E4M3 code and the
E8M0 extremes dequantized on the way out, bit for bit against a numpy
decoding written from the OCP definitions (not from the server's code).
"""
import json
import os
import tempfile

import numpy as np
import pytest

import engram_store
from engram_store import InvalidArgumentError
from test_engram_store import Cluster, Engramd, free_port, to_bfloat16_bits

DEEPSEEK = {"format": "fp8_e4m3", "scale": "ue8m0", "block": 32}
WEIGHTS, BLOCK = 256, 32
ROW = WEIGHTS + WEIGHTS // BLOCK  # 264 bytes
# Scales at both ends of E8M0 (0 = 2^-127, 254 = 2^127, 255 = NaN), around
# 2^0, and where 448 * scale overflows float32 and float16.
SCALES = [0, 1, 2, 100, 112, 126, 127, 128, 135, 140, 141, 200, 253, 254, 255]


@pytest.fixture
def server():
    s = Engramd()
    yield s
    s.stop()


def e4m3(codes: np.ndarray) -> np.ndarray:
    """OCP FP8 E4M3 codes as float64: bias 7, subnormals m * 2^-9, no
    infinities, S.1111.111 NaN."""
    codes = codes.astype(np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    mant = codes & 0x7
    mag = np.where(exp == 0, np.ldexp(mant.astype(np.float64), -9),
                   np.ldexp((8 + mant).astype(np.float64), exp - 10))
    return np.where((exp == 15) & (mant == 7), np.nan, sign * mag)


def e8m0(codes: np.ndarray) -> np.ndarray:
    """OCP E8M0 scales as float64: 2^(v - 127), 0xFF NaN."""
    codes = codes.astype(np.int64)
    return np.where(codes == 255, np.nan,
                    np.ldexp(np.ones(codes.shape), codes - 127))


def dequantize(rows: np.ndarray) -> np.ndarray:
    """[..., 264] uint8 rows -> [..., 256] float32: weight * scale in
    float32 (both are exact float32 numbers)."""
    w = e4m3(rows[..., :WEIGHTS]).astype(np.float32)
    s = e8m0(rows[..., WEIGHTS:]).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return w * np.repeat(s, BLOCK, axis=-1)


def quant_tables():
    """Head 0: row r holds every E4M3 code once (rotated by r) with scales
    from SCALES; head 1: random bytes."""
    rows = []
    for r in range(len(SCALES) * 4):
        weights = np.roll(np.arange(256, dtype=np.uint8), 7 * r)
        scales = np.array([SCALES[(r + k) % len(SCALES)] for k in range(8)],
                          np.uint8)
        rows.append(np.concatenate([weights, scales]))
    rng = np.random.default_rng(3)
    return [np.stack(rows), rng.integers(0, 256, (97, ROW), dtype=np.uint8)]


def all_ids(tables):
    """Every row of every head: [B = max rows, 1, H], cycling short heads."""
    n = max(len(t) for t in tables)
    return np.stack([np.arange(n) % len(t) for t in tables],
                    axis=1).reshape(n, 1, len(tables)).astype(np.int64)


def gathered(tables, ids):
    return np.stack([tables[h][ids[..., h]] for h in range(len(tables))],
                    axis=2)


def assert_same_bits(got_bits: np.ndarray, got_nan: np.ndarray,
                     want: np.ndarray, want_bits: np.ndarray):
    """NaN exactly where the reference is NaN, equal bits elsewhere."""
    nan = np.isnan(want)
    assert np.array_equal(got_nan, nan)
    assert np.array_equal(got_bits[~nan], want_bits[~nan])


def test_every_e4m3_code_and_e8m0_extreme_dequantizes_exactly(server):
    c = engram_store.Client(server.address)
    tables = quant_tables()
    info = c.populate(21, tables, quant=DEEPSEEK)
    assert info.quant == DEEPSEEK and info.values_per_row == 256
    assert c.describe(21).quant == DEEPSEEK
    ids = all_ids(tables)
    want = dequantize(gathered(tables, ids))
    # The table really covers what it claims to.
    assert set(tables[0][:, :WEIGHTS].ravel()) == set(range(256))
    assert np.isnan(want).any() and np.isinf(want).any()
    assert (want[~np.isnan(want)] == 0).any()

    f32 = c.lookup(21, ids, output_dtype="float32")
    assert f32.shape == ids.shape + (256,) and f32.dtype == np.float32
    assert_same_bits(f32.view(np.uint32), np.isnan(f32), want,
                     want.view(np.uint32))

    f16 = c.lookup(21, ids, output_dtype="float16")
    assert f16.dtype == np.float16
    with np.errstate(over="ignore", invalid="ignore"):
        want16 = want.astype(np.float16)
    assert_same_bits(f16.view(np.uint16), np.isnan(f16), want,
                     want16.view(np.uint16))

    bf16 = c.lookup(21, ids, output_dtype="bfloat16")
    assert bf16.dtype == np.uint16
    assert_same_bits(bf16, (bf16 & 0x7FFF) > 0x7F80, want,
                     to_bfloat16_bits(np.where(np.isnan(want), 0, want)))

    # The stored bytes, untouched, by default and as uint8.
    assert np.array_equal(c.lookup(21, ids), gathered(tables, ids))
    assert np.array_equal(c.lookup(21, ids, output_dtype="uint8"),
                          gathered(tables, ids))


def test_bad_quant_is_refused_and_nothing_is_stored(server):
    c = engram_store.Client(server.address)
    table = [np.zeros((4, ROW), np.uint8)]
    cases = [
        ({"format": "int4", "scale": "ue8m0", "block": 32}, "format"),
        ({"format": "fp8_e4m3", "scale": "fp32", "block": 32}, "scale"),
        ({"format": "fp8_e4m3", "scale": "ue8m0", "block": 0}, "block"),
        ({"format": "fp8_e4m3", "scale": "ue8m0", "block": 64}, "multiple"),
    ]
    for quant, word in cases:
        with pytest.raises(InvalidArgumentError, match=word):
            c.populate(23, table, quant=quant)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        c.populate(23, [np.zeros((4, ROW), np.float32)], quant=DEEPSEEK)
    with pytest.raises(ValueError, match="quant must be"):
        c.populate(23, table, quant={"format": "fp8_e4m3"})
    assert [l.layer_id for l in c.list_layers()] == []
    # A plain uint8 layer still refuses float output.
    c.populate(24, table)
    with pytest.raises(InvalidArgumentError, match="cannot be produced"):
        c.lookup(24, np.zeros((1, 1, 1), np.int64), output_dtype="float32")


def test_quant_survives_a_restart_from_the_data_dir():
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        s = Engramd(f"--data_dir={d}", port=port)
        tables = quant_tables()
        ids = all_ids(tables)
        try:
            c = engram_store.Client(s.address)
            c.populate(25, tables, quant=DEEPSEEK)
            before = c.lookup(25, ids, output_dtype="float32")
        finally:
            s.stop()
        s = Engramd(f"--data_dir={d}", port=port)
        try:
            c = engram_store.Client(s.address)
            assert c.describe(25).quant == DEEPSEEK
            after = c.lookup(25, ids, output_dtype="float32")
            assert np.array_equal(before.view(np.uint32),
                                  after.view(np.uint32))
        finally:
            s.stop()


def test_a_manifest_declares_quant():
    with tempfile.TemporaryDirectory() as d:
        tables = quant_tables()
        for h, t in enumerate(tables):
            np.save(os.path.join(d, f"h{h}.npy"), t)
        layer = {"layer_id": 26, "dtype": "uint8", "embedding_dim": ROW,
                 "table_vocab_sizes": [len(t) for t in tables],
                 "quant": DEEPSEEK,
                 "source": {"format": "npy",
                            "files": [f"h{h}.npy" for h in range(2)]}}
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump({"layers": [layer]}, f)
        s = Engramd(f"--load={d}/manifest.json")
        try:
            c = engram_store.Client(s.address)
            assert c.describe(26).quant == DEEPSEEK
            ids = all_ids(tables)
            got = c.lookup(26, ids, output_dtype="float32")
            want = dequantize(gathered(tables, ids))
            assert np.array_equal(np.isnan(got), np.isnan(want))
            assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
        finally:
            s.stop()


def test_cluster_lookups_dequantize():
    with Cluster() as cluster:
        tables = quant_tables()
        ids = all_ids(tables)
        want = dequantize(gathered(tables, ids))
        routed = cluster.routed_client()
        routed.populate(27, tables, quant=DEEPSEEK)
        # The client routing rows itself, and one shard gathering for it.
        for c in (routed, engram_store.Client(cluster.addresses[1])):
            got = c.lookup(27, ids, output_dtype="float32")
            assert np.array_equal(np.isnan(got), np.isnan(want))
            assert np.array_equal(got[~np.isnan(want)],
                                  want[~np.isnan(want)])
            assert c.describe(27).quant == DEEPSEEK


def test_direct_reads_dequantize():
    s = Engramd("--direct_reads")
    try:
        tables = quant_tables()
        engram_store.Client(s.address).populate(28, tables, quant=DEEPSEEK)
        c = engram_store.Client(s.address, direct_reads=True)
        ids = all_ids(tables)
        want = dequantize(gathered(tables, ids))
        got = c.lookup(28, ids, output_dtype="float32")
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
        bf16 = c.lookup(28, ids, output_dtype="bfloat16")
        nan = np.isnan(want)
        assert np.array_equal(bf16[~nan], to_bfloat16_bits(want)[~nan])
    finally:
        s.stop()
