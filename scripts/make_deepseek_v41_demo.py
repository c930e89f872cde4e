#!/usr/bin/env python3
"""Writes a small checkpoint in DeepSeek-V4.1's Engram layout, to load and
query the real format in one command (docs/engines.md):

    python3 scripts/make_deepseek_v41_demo.py /tmp/v41 && \\
        build/server/engramd --load=/tmp/v41/engram_manifest.json

OUT gets
- config.json: the model's Engram keys under text_config (V4.1's layer ids,
  n-gram size and head width; fewer heads and rows so that it stays small),
- model-00001-of-00001.safetensors + model.safetensors.index.json: per
  Engram layer L, layers.L.engram.embed.weight [N_total, 256] F8_E4M3 and
  layers.L.engram.embed.scale [N_total, 8] F8_E8M0, each layer's tables
  (one per n-gram order and head, sized by distinct primes) one after the
  other,
- token_map.npy: raw token id -> compressed id (int32, a stand-in for
  the tokenizer-derived map engines ship),
- engram_manifest.json: a load manifest serving each Engram layer as its
  layer id, 264-byte rows with the FP8 quant declared, and the model's
  hash (config.json and token_map.npy) for token lookups.

Only numpy is needed. Deterministic: the same OUT every run.
"""
import argparse
import json
import os
import struct

import numpy as np

WEIGHTS, SCALES = 256, 8


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def table_sizes(layer_ids, max_ngram, heads, base):
    """Per layer (config order): one prime per (order 2..N, head), each the
    smallest prime above the running start that no table took yet; the
    start restarts at base - 1 for each (layer, order)."""
    used, sizes = set(), []
    for _ in layer_ids:
        layer = []
        for _order in range(2, max_ngram + 1):
            start = base - 1
            for _head in range(heads):
                p = start + 1
                while not is_prime(p) or p in used:
                    p += 1
                used.add(p)
                layer.append(p)
                start = p
        sizes.append(layer)
    return sizes


def fp8_rows(rows: int, seed: int):
    """FP8 E4M3 weights (no NaN codes) and UE8M0 scales near 2^-4."""
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 256, (rows, WEIGHTS), dtype=np.uint8)
    weight[(weight & 0x7F) == 0x7F] ^= 1  # S.1111.111 is NaN
    scale = rng.integers(118, 128, (rows, SCALES), dtype=np.uint8)
    return weight, scale


def write_safetensors(path, tensors):
    """tensors: name -> (dtype name, uint8 array)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write (created if missing)")
    p.add_argument("--heads", type=int, default=2,
                   help="heads per n-gram order (V4.1: 8)")
    p.add_argument("--vocab", type=int, default=1000,
                   help="base rows per table (V4.1: 16000000)")
    args = p.parse_args()
    layer_ids, max_ngram = [1, 14], 4
    sizes = table_sizes(layer_ids, max_ngram, args.heads, args.vocab)
    os.makedirs(args.out, exist_ok=True)
    config = {"text_config": {
        "engram_layer_ids": layer_ids,
        "engram_max_ngram_size": max_ngram,
        "engram_n_heads": args.heads,
        "engram_vocab_size": args.vocab,
        "engram_num_embeddings": [sum(s) for s in sizes],
        "engram_head_dim": WEIGHTS,
        "engram_pad_token_id": 2,
        "engram_compressed_vocab_size": 99092,
        "image_token_id": 129264,
        "vocab_size": 129280,
    }}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shard = "model-00001-of-00001.safetensors"
    tensors, layers = {}, []
    for layer, layer_sizes in zip(layer_ids, sizes):
        weight, scale = fp8_rows(sum(layer_sizes), seed=layer)
        names = [f"layers.{layer}.engram.embed.weight",
                 f"layers.{layer}.engram.embed.scale"]
        tensors[names[0]] = ("F8_E4M3", weight)
        tensors[names[1]] = ("F8_E8M0", scale)
        layers.append({
            "layer_id": layer, "dtype": "uint8",
            "embedding_dim": WEIGHTS + SCALES,
            "table_vocab_sizes": layer_sizes,
            "quant": {"format": "fp8_e4m3", "scale": "ue8m0",
                      "block": WEIGHTS // SCALES},
            "source": {"format": "safetensors",
                       "index": "model.safetensors.index.json",
                       "tensors": names}})
    write_safetensors(os.path.join(args.out, shard), tensors)
    with open(os.path.join(args.out, "model.safetensors.index.json"),
              "w") as f:
        json.dump({"metadata": {},
                   "weight_map": {name: shard for name in tensors}}, f,
                  indent=2)
    # The token map engines ship beside the model (raw id -> compressed
    # id; here a deterministic stand-in with V distinct values, since the
    # real one comes from the tokenizer).
    text = config["text_config"]
    rng = np.random.default_rng(41)
    v, vocab = text["engram_compressed_vocab_size"], text["vocab_size"]
    token_map = np.concatenate([np.arange(v), rng.integers(0, v, vocab - v)])
    rng.shuffle(token_map)
    np.save(os.path.join(args.out, "token_map.npy"),
            token_map.astype(np.int32))
    manifest = os.path.join(args.out, "engram_manifest.json")
    with open(manifest, "w") as f:
        json.dump({"layers": layers,
                   "model": {"config": "config.json",
                             "token_map": "token_map.npy"}}, f, indent=2)
    print(f"wrote {args.out}: Engram layers {layer_ids}, "
          f"{len(sizes[0])} tables each, "
          f"{config['text_config']['engram_num_embeddings']} rows of "
          f"{WEIGHTS + SCALES} bytes; serve it with "
          f"engramd --load={manifest}")


if __name__ == "__main__":
    main()
