"""scripts/make_deepseek_v41_demo.py: a checkpoint in DeepSeek-V4.1's
Engram layout that engramd loads with --load, answering the engines'
lookups (fused entries, both layers in one call, packed and dequantized)
with the checkpoint's bytes, read back here with a separate safetensors
parser.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

import engram_store
from test_engram_store import Engramd, to_bfloat16_bits
from test_quantized import DEEPSEEK, dequantize

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
