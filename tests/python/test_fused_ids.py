"""Lookups in the engines' dialect against real engramd processes: ids in
the layer's fused id space (per column, or flat entries as SGLang's
entry_gather asks), head slices as tensor-parallel ranks ask, and several
lookups in one call (lookup_many), on the
single-server RPC path, the cluster paths (a shard gathering, the client
routing itself) and direct reads. Every answer is checked against a numpy
gather of the fused table.
"""
import numpy as np
import pytest

import engram_store
from engram_store import InvalidArgumentError
from test_engram_store import Cluster, Engramd

SIZES = [97, 13, 211, 64, 5]
DIM = 12


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(41)
    return [rng.standard_normal((n, DIM)).astype(np.float32) for n in SIZES]


def offsets():
    return np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)


def per_head_ids(rng, batch, length, h0=0, h1=len(SIZES)):
    return np.stack([rng.integers(0, SIZES[h], (batch, length))
                     for h in range(h0, h1)], axis=-1).astype(np.int64)


def gather(tables, ids, h0=0):
    """Rows of per-head ids [B, L, H'] of heads h0.. as [B, L, H', D]."""
    out = np.empty(ids.shape + (DIM,), np.float32)
    for c in range(ids.shape[-1]):
        out[..., c, :] = tables[h0 + c][ids[..., c]]
    return out


def check_every_form(client, layer, tables):
    rng = np.random.default_rng(5)
    off = offsets()
    ids = per_head_ids(rng, 3, 4)
    want = gather(tables, ids)
    # Fused ids per column: the same rows as per-head ids.
    fused = ids + off[:-1]
    assert np.array_equal(client.lookup(layer, fused, id_form="fused"), want)
    # Entries: any fused id, rows [n, D]; heads repeat and mix freely.
    fused_table = np.concatenate(tables)
    entries = rng.integers(0, off[-1], 500).astype(np.int64)
    entries[:5] = [0, off[-1] - 1, off[1], off[1] - 1, off[4]]
    got = client.lookup(layer, entries, id_form="entries")
    assert got.shape == (500, DIM)
    assert np.array_equal(got, fused_table[entries])
    # A rank's head slice [1, 4): per-head and fused ids of those heads.
    sliced = per_head_ids(rng, 2, 3, 1, 4)
    want = gather(tables, sliced, h0=1)
    assert np.array_equal(client.lookup(layer, sliced, heads=(1, 4)), want)
    assert np.array_equal(
        client.lookup(layer, sliced + off[1:4], id_form="fused",
                      heads=(1, 4)), want)
    # Entries within a slice's fused range; float conversions still apply.
    ranged = rng.integers(off[2], off[5], 64).astype(np.int64)
    got = client.lookup(layer, ranged, id_form="entries", heads=(2, 5),
                        output_dtype="float16")
    assert np.array_equal(got, fused_table[ranged].astype(np.float16))
    # Asynchronous lookups speak the same dialect.
    got = client.lookup_async(layer, entries, id_form="entries").result()
    assert np.array_equal(got, fused_table[entries])


def check_lookup_many(client, layer, tables):
    """Two layers of a step in one call: the same rows as one lookup
    each; a bad lookup fails the call, naming it."""
    rng = np.random.default_rng(8)
    off = offsets()
    ids = per_head_ids(rng, 2, 3)
    entries = rng.integers(0, off[-1], 40).astype(np.int64)
    first, second = client.lookup_many([(layer, ids), (layer, ids + 0)],
                                       output_dtype="bfloat16")
    want = client.lookup(layer, ids, output_dtype="bfloat16")
    assert np.array_equal(first, want) and np.array_equal(second, want)
    out = np.empty((40, DIM), np.float32)
    got = client.lookup_many([(layer, entries, out), (layer, entries)],
                             id_form="entries")
    assert got[0] is out
    fused_table = np.concatenate(tables)
    assert np.array_equal(out, fused_table[entries])
    assert np.array_equal(got[1], fused_table[entries])
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup_many([(layer, entries),
                            (layer, np.array([off[-1]]))], id_form="entries")
    assert "lookups[1]: row_ids[0]" in str(e.value)
    # Big lookups are gathered on the server's pool after the call's
    # handler returned: their ids must live until then (they did not, and
    # the server read freed ids, or crashed).
    big = [per_head_ids(rng, 1, 4000) for _ in range(3)]
    got = client.lookup_many([(layer, ids) for ids in big])
    for ids, rows in zip(big, got):
        assert np.array_equal(rows, gather(tables, ids))


def check_bad_ids(client, layer):
    off = offsets()
    ids = np.zeros((1, 1, len(SIZES)), np.int64) + off[:-1]
    ids[0, 0, 2] = off[3]  # head 3's first row, in column 2
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup(layer, ids, id_form="fused")
    assert (f"row_ids[0, 0, 2] = {off[3]} is out of range: column 2 is "
            f"head 2, whose fused ids are [{off[2]}, {off[3]})") in str(e.value)
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup(layer, np.array([3, off[-1]]), id_form="entries")
    assert (f"row_ids[1] = {off[-1]} is outside the fused id range "
            f"[0, {off[-1]})") in str(e.value)
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup(layer, np.array([off[1] - 1]), id_form="entries",
                      heads=(1, 3))
    assert "of heads [1, 3)" in str(e.value)
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup(layer, np.zeros((1, 1, 2), np.int64), heads=(4, 6))
    assert "head slice [4, 6) is not a non-empty range" in str(e.value)
    with pytest.raises(InvalidArgumentError) as e:
        client.lookup(layer, np.zeros((1, 1, 3), np.int64), heads=(1, 3))
    assert "H = 3 must equal the 2 heads looked up" in str(e.value)
    with pytest.raises(ValueError):
        client.lookup(layer, np.zeros((2, 1, 1), np.int64), id_form="entries")


def test_single_server(tables):
    s = Engramd()
    try:
        c = engram_store.Client(s.address)
        c.populate(3, tables)
        check_every_form(c, 3, tables)
        check_lookup_many(c, 3, tables)
        check_bad_ids(c, 3)
        # The server kept serving and kept its rows.
        ids = per_head_ids(np.random.default_rng(9), 2, 2)
        assert np.array_equal(c.lookup(3, ids), gather(tables, ids))
    finally:
        s.stop()


def test_cluster_shard_and_routed_client(tables):
    with Cluster() as cluster:
        routed = cluster.routed_client()
        routed.populate(4, tables)
        for c in (routed, engram_store.Client(cluster.addresses[2])):
            check_every_form(c, 4, tables)
            check_lookup_many(c, 4, tables)
            check_bad_ids(c, 4)


def test_direct_reads(tables):
    s = Engramd("--direct_reads")
    try:
        engram_store.Client(s.address).populate(5, tables)
        c = engram_store.Client(s.address, direct_reads=True)
        check_every_form(c, 5, tables)
        check_lookup_many(c, 5, tables)
        check_bad_ids(c, 5)
    finally:
        s.stop()
