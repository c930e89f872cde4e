"""scripts/make_deepseek_v41_demo.py: a checkpoint in DeepSeek-V4.1's
Engram layout that engramd loads with --load, answering the engines'
lookups (fused entries, both layers in one call, packed and dequantized)
with the checkpoint's bytes, read back here with a separate safetensors
parser.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

import pytest

import engram_store
from engram_store import FailedPreconditionError, InvalidArgumentError
from test_engram_store import Cluster, Engramd, to_bfloat16_bits
from test_quantized import DEEPSEEK, dequantize

ENGRAMCTL = os.environ.get("ENGRAM_TEST_ENGRAMCTL", "build/client/engramctl")
SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                      "make_deepseek_v41_demo.py")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"],
                     np.frombuffer(data[a:b], np.uint8).reshape(info["shape"]))
    return out


def test_demo_checkpoint_loads_and_serves_the_engines_dialect():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, SCRIPT, d], check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)["text_config"]
        assert config["engram_layer_ids"] == [1, 14]
        tensors = read_safetensors(
            os.path.join(d, "model-00001-of-00001.safetensors"))
        s = Engramd(f"--load={d}/engram_manifest.json")
        try:
            c = engram_store.Client(s.address)
            fused, entries = {}, {}
            rng = np.random.default_rng(0)
            for layer, total in zip(config["engram_layer_ids"],
                                    config["engram_num_embeddings"]):
                info = c.describe(layer)
                assert info.quant == DEEPSEEK
                sizes = info.table_vocab_sizes
                assert sum(sizes) == total
                assert len(sizes) == 3 * config["engram_n_heads"]
                assert len(set(sizes)) == len(sizes)
                dtype_w, weight = tensors[f"layers.{layer}.engram.embed.weight"]
                dtype_s, scale = tensors[f"layers.{layer}.engram.embed.scale"]
                assert (dtype_w, dtype_s) == ("F8_E4M3", "F8_E8M0")
                fused[layer] = np.concatenate([weight, scale], axis=1)
                entries[layer] = rng.integers(0, total, 200).astype(np.int64)
            packed = c.lookup_many([(layer, ids) for layer, ids
                                    in entries.items()],
                                   id_form="entries", output_dtype="uint8")
            values = c.lookup_many([(layer, ids) for layer, ids
                                    in entries.items()],
                                   id_form="entries", output_dtype="bfloat16")
            for (layer, ids), rows, bf16 in zip(entries.items(), packed,
                                                values):
                want = fused[layer][ids]
                assert np.array_equal(rows, want)
                assert np.array_equal(bf16, to_bfloat16_bits(dequantize(want)))
        finally:
            s.stop()


def test_lookup_tokens_hashes_as_the_model_does():
    """Token ids in: the server hashes them with the model the manifest
    names and returns the rows EngramHasher's ids address, for both layers
    in one call, with and without history."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, SCRIPT, d], check=True,
                       stdout=subprocess.DEVNULL)
        tensors = read_safetensors(
            os.path.join(d, "model-00001-of-00001.safetensors"))
        hasher = engram_store.EngramHasher(os.path.join(d, "config.json"),
                                           os.path.join(d, "token_map.npy"))
        s = Engramd(f"--load={d}/engram_manifest.json")
        try:
            c = engram_store.Client(s.address)
            rng = np.random.default_rng(5)
            tokens = rng.integers(0, 129280, (2, 6))
            tokens[1, 2] = 129264  # the image token
            history = rng.integers(0, 129280, (2, 3))
            for hist in (None, history, history[:, 1:]):
                packed = c.lookup_tokens([1, 14], tokens, history=hist,
                                         output_dtype="uint8")
                values = c.lookup_tokens([14], tokens, history=hist,
                                         output_dtype="bfloat16")
                for layer, rows in zip((1, 14), packed):
                    fused = np.concatenate(
                        [tensors[f"layers.{layer}.engram.embed.weight"][1],
                         tensors[f"layers.{layer}.engram.embed.scale"][1]],
                        axis=1)
                    ids = hasher.hash(layer, tokens, hist, fused=True)
                    assert rows.shape == (2, 6, 6, 264)
                    assert np.array_equal(rows, fused[ids])
                    if layer == 14:
                        assert np.array_equal(
                            values[0], to_bfloat16_bits(dequantize(fused[ids])))
                # Into reused step buffers: the same rows, the buffers back.
                bufs = [np.full((2, 6, 6, 264), 7, np.uint8) for _ in range(2)]
                got = c.lookup_tokens([1, 14], tokens, history=hist,
                                      output_dtype="uint8", out=bufs)
                assert got[0] is bufs[0] and got[1] is bufs[1]
                assert all(np.array_equal(a, b) for a, b in zip(bufs, packed))
            with pytest.raises(ValueError, match=r"out for layer 1 is \(2, 5, 6, 264\)"):
                c.lookup_tokens([1], tokens, output_dtype="uint8",
                                out=[np.empty((2, 5, 6, 264), np.uint8)])
            with pytest.raises(TypeError, match="pass output_dtype"):
                c.lookup_tokens([14], tokens, output_dtype="bfloat16",
                                out=[np.empty((2, 6, 6, 256), np.float32)])
            with pytest.raises(ValueError, match="out has 1 arrays for 2 layers"):
                c.lookup_tokens([1, 14], tokens,
                                out=[np.empty((2, 6, 6, 264), np.uint8)])
            with pytest.raises(InvalidArgumentError) as e:
                c.lookup_tokens([1], [[129280]])
            assert "tokens[0, 0] = 129280 is not a raw token id" in str(e.value)
            # Populated again with the same table sizes (so the primes
            # match) but without a model: another version, refused rather
            # than hashed with the old model (found in review: it was read).
            sizes = c.describe(1).table_vocab_sizes
            c.remove(1)
            c.populate(1, [np.zeros((n, 264), np.uint8) for n in sizes])
            with pytest.raises(FailedPreconditionError) as e:
                c.lookup_tokens([1], tokens, output_dtype="uint8")
            assert ("layer 1 is version 2; its model hash came with "
                    "version 1") in str(e.value)
            c.populate(3, [np.zeros((4, 8), np.float32)])
            with pytest.raises(FailedPreconditionError) as e:
                c.lookup_tokens([1, 3], tokens)
            assert "lookups[1]: layer 3 has no model hash" in str(e.value)
            # Status says which layers answer token lookups, and why not.
            models = {l["layer_id"]: l["token_model"]
                      for l in c.status()["layers"]}
            assert models == {1: "stale", 3: "none", 14: "current"}, models
            screen = subprocess.run(
                [ENGRAMCTL, f"--address={s.address}", "status"], check=True,
                capture_output=True, text=True).stdout
            rows = {line.split()[0]: line.split()[-1]
                    for line in screen.splitlines()
                    if line.split() and line.split()[0] in ("1", "3", "14")}
            assert rows == {"1": "stale", "3": "-", "14": "yes"}, screen
        finally:
            s.stop()


def test_every_shard_learns_the_model_of_a_cluster_load():
    """A Load through one shard registers the model's hash on every shard
    that staged the layer (before: only on the coordinator, so the other
    shards refused LookupTokens with "has no model hash")."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, SCRIPT, d], check=True,
                       stdout=subprocess.DEVNULL)
        hasher = engram_store.EngramHasher(os.path.join(d, "config.json"),
                                           os.path.join(d, "token_map.npy"))
        with Cluster(3, 2, flags=(f"--load_root={d}",)) as cluster:
            engram_store.Client(cluster.addresses[0]).load("engram_manifest.json")
            tokens = np.random.default_rng(9).integers(0, 129280, (2, 5))
            ids = hasher.hash(14, tokens, None, fused=True)
            want = engram_store.Client(cluster.addresses[0]).lookup(
                14, ids, id_form="fused", output_dtype="uint8")
            for address in cluster.addresses:
                (got,) = engram_store.Client(address).lookup_tokens(
                    [14], tokens, output_dtype="uint8")
                assert np.array_equal(got, want), address


def _rpc_rows(address, layers, tokens, hist):
    return engram_store.Client(address).lookup_tokens(
        layers, tokens, history=hist, output_dtype="uint8")


def test_a_direct_reads_client_hashes_tokens_itself_and_reads_shard_memory():
    """With direct reads the client hashes token ids with the layer's model
    (fetched once from the server) and copies the rows out of engramd's
    memory: the same rows as the server's LookupTokens, no LookupTokens
    call reaches the server, and they keep coming while it is frozen. A
    layer populated again without a model is refused with the server's
    reason, not read with the old model's ids."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, SCRIPT, d], check=True,
                       stdout=subprocess.DEVNULL)
        s = Engramd("--direct_reads", f"--load={d}/engram_manifest.json")
        try:
            rpc = engram_store.Client(s.address)
            direct = engram_store.Client(s.address, direct_reads=True,
                                         timeout_s=10)
            rng = np.random.default_rng(11)
            tokens = rng.integers(0, 129280, (3, 4))
            tokens[2, 1] = 129264  # the image token
            history = rng.integers(0, 129280, (3, 2))
            for hist in (None, history):
                want = _rpc_rows(s.address, [1, 14], tokens, hist)
                got = direct.lookup_tokens([1, 14], tokens, history=hist,
                                           output_dtype="uint8")
                assert all(np.array_equal(a, b) for a, b in zip(got, want))
                bf16 = direct.lookup_tokens([14], tokens, history=hist,
                                            output_dtype="bfloat16")
                assert np.array_equal(
                    bf16[0], rpc.lookup_tokens([14], tokens, history=hist,
                                               output_dtype="bfloat16")[0])
            calls = rpc.status()["calls"]["LookupTokens"]["calls"]
            assert calls == 4, calls  # the RPC client's, none of direct's
            # Frozen server: every row still comes from its memory (the
            # first direct lookups attached it).
            want = _rpc_rows(s.address, [1, 14], tokens, None)
            for _ in range(20):  # attachments are made in the background
                direct.lookup_tokens([1, 14], tokens, output_dtype="uint8")
                time.sleep(0.05)
            s.proc.send_signal(signal.SIGSTOP)
            try:
                got = direct.lookup_tokens([1, 14], tokens,
                                           output_dtype="uint8")
                assert all(np.array_equal(a, b) for a, b in zip(got, want))
            finally:
                s.proc.send_signal(signal.SIGCONT)
            # Populated again with the same sizes but no model.
            sizes = rpc.describe(1).table_vocab_sizes
            rpc.remove(1)
            rpc.populate(1, [np.zeros((n, 264), np.uint8) for n in sizes])
            with pytest.raises(FailedPreconditionError) as e:
                direct.lookup_tokens([14, 1], tokens, output_dtype="uint8")
            assert ("lookups[1]: layer 1 is version 2; its model hash came "
                    "with version 1") in str(e.value)
            # The other layer is untouched and still served.
            (got,) = direct.lookup_tokens([14], tokens, output_dtype="uint8")
            assert np.array_equal(got, want[1])
        finally:
            s.stop()


def test_a_cluster_client_hashes_tokens_itself_and_asks_the_owners():
    """A cluster client hashes with the model every shard learnt from the
    Load and reads from the rows' owners: the same rows as a shard's
    LookupTokens, and no shard serves a LookupTokens call for it."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, SCRIPT, d], check=True,
                       stdout=subprocess.DEVNULL)
        with Cluster(3, 2, flags=(f"--load_root={d}",)) as cluster:
            engram_store.Client(cluster.addresses[0]).load(
                "engram_manifest.json")
            tokens = np.random.default_rng(3).integers(0, 129280, (2, 5))
            routed = engram_store.Client.cluster(cluster.addresses, 2)
            got = routed.lookup_tokens([1, 14], tokens, output_dtype="uint8")
            want = _rpc_rows(cluster.addresses[1], [1, 14], tokens, None)
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
            served = [engram_store.Client(a).status()["calls"]
                      .get("LookupTokens", {"calls": 0})["calls"]
                      for a in cluster.addresses]
            assert served == [0, 1, 0], served
            # Shard 0 restarted without the model: it recovers its rows from
            # replicas and still serves them to readers that hashed with the
            # model elsewhere (routed clients, shard 1's LookupTokens); a
            # fresh routed client learns the model from shard 1 (shard 0
            # knows none); only shard 0's own LookupTokens lacks it.
            old = cluster.shards[0]
            old.stop()
            restarted = Engramd(*old.proc.args[2:], port=old.port)
            cluster.shards[0] = restarted
            c0 = engram_store.Client(restarted.address)
            deadline = time.time() + 30
            while {1, 14} - {l["layer_id"] for l in c0.status()["layers"]}:
                assert time.time() < deadline, "shard 0 did not recover"
                time.sleep(0.1)
            fresh = engram_store.Client.cluster(cluster.addresses, 2)
            for client in (routed, fresh):
                got = client.lookup_tokens([1, 14], tokens,
                                           output_dtype="uint8")
                assert all(np.array_equal(a, b) for a, b in zip(got, want))
            got = _rpc_rows(cluster.addresses[1], [1, 14], tokens, None)
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
            with pytest.raises(FailedPreconditionError, match="no model hash"):
                c0.lookup_tokens([14], tokens)
            # Populated again (zeros, same sizes) without a model: the
            # owners refuse the cached model's ids (before, the client got
            # the new zero rows), and the reason is the server's.
            c = engram_store.Client(cluster.addresses[1])
            sizes = c.describe(1).table_vocab_sizes
            c.remove(1)
            c.populate(1, [np.zeros((n, 264), np.uint8) for n in sizes])
            with pytest.raises(FailedPreconditionError) as e:
                routed.lookup_tokens([1], tokens, output_dtype="uint8")
            assert "its model hash came with version" in str(e.value)
            (got,) = fresh.lookup_tokens([14], tokens, output_dtype="uint8")
            assert np.array_equal(got, want[1])
            c.populate(3, [np.zeros((4, 8), np.float32)])
            with pytest.raises(FailedPreconditionError) as e:
                fresh.lookup_tokens([3], tokens)
            assert "lookups[0]: layer 3 has no model hash" in str(e.value)
