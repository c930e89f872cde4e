"""The Engram hash (engram_store.EngramHasher, the C++ library under it)
against an independent numpy restatement of the published algorithm
(../shared/ENGRAM_HASH.md): numpy's own generator for the multipliers,
primes by trial division, int64 products and xor wrapping as numpy's do,
floor modulo. Random token streams for the V4.1 config and a demo-style
config (per-order vocab sizes, N = 3, H = 8, layers [1, 15]): sequence
starts, short histories, B > 1 with different histories, the image token,
compressed ids >= V and negative.
"""
import json
import os
import tempfile

import numpy as np
import pytest

import engram_store
from engram_store import InvalidArgumentError, _engram_store

V41 = {"engram_layer_ids": [1, 14], "engram_max_ngram_size": 4,
       "engram_n_heads": 8, "engram_vocab_size": 16000000,
       "engram_num_embeddings": [384006168, 384016682],
       "engram_head_dim": 256, "engram_pad_token_id": 2,
       "engram_compressed_vocab_size": 99092, "image_token_id": 129264,
       "vocab_size": 129280}
DEMO = {"engram_layer_ids": [1, 15], "engram_max_ngram_size": 3,
        "engram_n_heads": 8, "engram_vocab_size": [6464, 7000],
        "engram_head_dim": 64, "engram_pad_token_id": 0,
        "engram_compressed_vocab_size": 3001, "vocab_size": 4000}


def reference_layout(config):
    """Per layer: (multipliers, primes) by the published rules."""
    n, heads = config["engram_max_ngram_size"], config["engram_n_heads"]
    vocab = config["engram_vocab_size"]
    vocab = vocab if isinstance(vocab, list) else [vocab] * (n - 1)
    v = config["engram_compressed_vocab_size"]
    half = max(1, (np.iinfo(np.int64).max // v) // 2)
    used, out = set(), {}
    for layer in config["engram_layer_ids"]:
        r = np.random.default_rng(10007 * layer).integers(
            0, half, size=n, dtype=np.int64)
        primes = []
        for order in range(2, n + 1):
            start = vocab[order - 2] - 1
            for _ in range(heads):
                p = start + 1
                while p in used or any(p % f == 0 for f in
                                       range(2, int(p ** 0.5) + 1)):
                    p += 1
                used.add(p)
                primes.append(p)
                start = p
        out[layer] = (2 * r + 1, np.array(primes, np.int64))
    return out


def reference_hash(config, layout, layer, values, dead, history_length,
                   fused):
    """values/dead [B, h + T] compressed ids and image marks -> [B, T, ids]."""
    n, heads = config["engram_max_ngram_size"], config["engram_n_heads"]
    mult, primes = layout[layer]
    pad = np.int64(config["_pad"])
    offsets = np.concatenate([[0], np.cumsum(primes)[:-1]]).astype(np.int64)
    batch, total = values.shape
    tokens = total - history_length
    out = np.empty((batch, tokens, (n - 1) * heads), np.int64)
    pos = np.arange(history_length, total)
    with np.errstate(over="ignore"):
        for b in range(batch):
            mix = None
            for k in range(n):
                src = pos - k
                ok = src >= 0
                v = np.where(ok, values[b, np.maximum(src, 0)], pad)
                v = np.where(ok & dead[b, np.maximum(src, 0)], pad, v)
                product = v.astype(np.int64) * mult[k]
                mix = product if mix is None else mix ^ product
                if k == 0:
                    continue
                for j in range(heads):
                    c = (k - 1) * heads + j
                    ids = np.mod(mix, primes[c])
                    out[b, :, c] = ids + offsets[c] if fused else ids
    return out


def write_model(folder, config, token_map, nested):
    path = os.path.join(folder, "config.json")
    with open(path, "w") as f:
        json.dump({"text_config": config} if nested else config, f)
    map_path = os.path.join(folder, "token_map.npy")
    np.save(map_path, token_map.astype(np.int32))
    return path, map_path


def random_token_map(config, rng):
    v, vocab = config["engram_compressed_vocab_size"], config["vocab_size"]
    m = np.concatenate([np.arange(v), rng.integers(0, v, vocab - v)])
    rng.shuffle(m)
    return m


@pytest.mark.parametrize("config,nested", [(V41, True), (DEMO, False)])
def test_hash_matches_a_numpy_restatement(config, nested):
    rng = np.random.default_rng(7)
    token_map = random_token_map(config, rng)
    layout = reference_layout(config)
    config = dict(config, _pad=int(token_map[config["engram_pad_token_id"]]))
    with tempfile.TemporaryDirectory() as d:
        hasher = engram_store.EngramHasher(
            *write_model(d, config, token_map, nested))
    n = config["engram_max_ngram_size"]
    image = config.get("image_token_id")
    for layer in config["engram_layer_ids"]:
        assert hasher.multipliers(layer) == list(layout[layer][0])
        assert hasher.table_sizes(layer) == list(layout[layer][1])
        for h in range(n):  # sequence start, then each history length
            tokens = rng.integers(0, config["vocab_size"], (3, 17))
            history = rng.integers(0, config["vocab_size"], (3, h))
            if image is not None:
                tokens[0, 4] = image
                tokens[2, 0] = image
                if h:
                    history[1, -1] = image
            raw = np.concatenate([history, tokens], axis=1)
            dead = raw == image if image is not None else np.zeros_like(
                raw, bool)
            for fused in (False, True):
                got = hasher.hash(layer, tokens, history if h else None,
                                  fused=fused)
                want = reference_hash(config, layout, layer, token_map[raw],
                                      dead, h, fused)
                assert np.array_equal(got, want), (layer, h, fused)


def test_compressed_ids_past_v_and_negative_wrap_like_numpy():
    rng = np.random.default_rng(3)
    token_map = random_token_map(DEMO, rng)
    layout = reference_layout(DEMO)
    config = dict(DEMO, _pad=int(token_map[0]))
    with tempfile.TemporaryDirectory() as d:
        hasher = engram_store.EngramHasher(
            *write_model(d, DEMO, token_map, False))
    values = rng.integers(-2**62, 2**62, (4, 2 + 30))
    values[0, :5] = [3000, 3001, 2**63 - 1, -1, -2**63]
    got = hasher.hash_compressed(15, values, 2, fused=True)
    want = reference_hash(config, layout, 15, values,
                          np.zeros_like(values, bool), 2, True)
    assert np.array_equal(got, want)


def test_v41_published_constants_and_numpy_generator():
    layout = reference_layout(V41)
    assert list(layout[1][0]) == [76632096046245, 4839876093313,
                                  35959672319349, 73987337458391]
    assert list(layout[14][0]) == [67716810739261, 51510806800915,
                                   30921347202721, 82619226485591]
    assert [int(layout[l][1].sum()) for l in (1, 14)] == \
        V41["engram_num_embeddings"]
    assert np.random.default_rng(10007).bit_generator.random_raw() == \
        0xd2c3f84026661e33
    # The generator's 64-bit and 32-bit bounded paths, many seeds.
    for seed in (0, 1, 10007, 140098, 2**40 + 3):
        for high in (1, 2, 7, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 3 * 2**40,
                     2**62 + 11, 2**63 - 1):
            want = np.random.default_rng(seed).integers(
                0, high, size=9, dtype=np.int64)
            got = _engram_store.numpy_integers(seed, high, 9)
            assert list(want) == got, (seed, high)


def test_refusals():
    rng = np.random.default_rng(1)
    token_map = random_token_map(DEMO, rng)
    with tempfile.TemporaryDirectory() as d:
        config_path, map_path = write_model(d, DEMO, token_map, False)
        hasher = engram_store.EngramHasher(config_path, map_path)
        with pytest.raises(InvalidArgumentError) as e:
            hasher.hash(1, [[4000]])
        assert "tokens[0, 0] = 4000 is not a raw token id" in str(e.value)
        with pytest.raises(InvalidArgumentError) as e:
            hasher.hash(2, [[1]])
        assert "layer 2 is not an Engram layer" in str(e.value)
        with pytest.raises(InvalidArgumentError) as e:
            hasher.hash(1, [[1]], history=[[1, 2, 3]])
        assert "at most 2 (N - 1)" in str(e.value)
        bad = dict(DEMO, engram_compressed_vocab_size=3002)
        config_path, map_path = write_model(d, bad, token_map, True)
        with pytest.raises(InvalidArgumentError) as e:
            engram_store.EngramHasher(config_path, map_path)
        assert ("the token map has 3001 distinct compressed ids; "
                "engram_compressed_vocab_size is 3002") in str(e.value)
