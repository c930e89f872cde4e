"""Writes the fuzzers' seed corpus (fuzz/corpus/<target>/): one valid
input per shape of request or file each parser takes, for libFuzzer to
mutate from. Re-run after a format change:

    PYTHONPATH=build/python /usr/bin/python3 fuzz/make_seeds.py
"""
import io
import json
import os
import struct

import numpy as np

from engram.v1 import engram_pb2 as pb

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def lookup_requests():
    ids = np.array([3, 0, 12, 6, 0, 1], np.int64)
    put("lookup_request_fuzz", "bytes", pb.LookupRequest(
        layer_id=1, shape=[2, 1, 3], row_ids=ids.tobytes()).SerializeToString())
    put("lookup_request_fuzz", "list", pb.LookupRequest(
        layer_id=1, shape=[1, 2, 3], row_ids_list=ids.tolist())
        .SerializeToString())
    put("lookup_request_fuzz", "as_values", pb.LookupRequest(
        layer_id=2, shape=[1, 1, 2], row_ids_list=[4, 8], as_values=True)
        .SerializeToString())
    put("lookup_request_fuzz", "to_float16", pb.LookupRequest(
        layer_id=2, shape=[2, 1, 2], row_ids_list=[0, 1, 2, 3],
        output_dtype=pb.DTYPE_FLOAT16).SerializeToString())


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def gather_request(layer_id, heads, row_ids):
    # engram.internal.v1.GatherRequest{layer_id = 1, heads = 2 (packed),
    # row_ids = 3 (packed)}; no Python stubs are generated for peer.proto.
    packed = lambda field, values: (
        varint(field << 3 | 2) + varint(len(b"".join(map(varint, values)))) +
        b"".join(map(varint, values)))
    return (varint(1 << 3) + varint(layer_id) + packed(2, heads) +
            packed(3, row_ids))


def gather_requests():
    # Shard 1 of 3, R = 2, holds most rows of each head; some asked rows are
    # its, some not.
    put("gather_request_fuzz", "rows",
        gather_request(3, [0, 1, 2, 2], [20, 3, 50, 99]))
    put("gather_request_fuzz", "unpaired", gather_request(3, [0], [1, 2]))


def framed(*messages):
    out = b""
    for m in messages:
        b = m.SerializeToString()
        out += struct.pack("<H", len(b)) + b
    return out


def populate_streams():
    header = pb.PopulateRequest()
    header.header.layer_id = 5
    header.header.config.table_vocab_sizes.extend([4, 2])
    header.header.config.embedding_dim = 2
    chunks = []
    for head, rows in ((0, 4), (1, 2)):
        c = pb.PopulateRequest()
        c.chunk.head = head
        c.chunk.row_offset = 0
        c.chunk.data = bytes(range(rows * 2 * 4))
        chunks.append(c)
    put("populate_fuzz", "whole_layer", framed(header, *chunks))
    bf16 = pb.PopulateRequest()
    bf16.CopyFrom(header)
    bf16.header.config.dtype = pb.DTYPE_BFLOAT16
    half = pb.PopulateRequest()
    half.chunk.head = 1
    half.chunk.row_offset = 1
    half.chunk.data = b"\x01\x02\x03\x04"
    put("populate_fuzz", "bfloat16_partial", framed(bf16, half))


def lookup_responses():
    rows = bytes(range(64))
    response = pb.LookupResponse(shape=[1, 1, 4], dtype=pb.DTYPE_FLOAT32,
                                 data=rows).SerializeToString()
    # out = 16 * 4 bytes, rows of 16 bytes, slices cut after 5 bytes.
    put("wire_format_fuzz", "lookup", bytes([16, 15, 5]) + response)
    put("wire_format_fuzz", "gather",
        bytes([8, 7, 3]) + b"\x0a\x20" + bytes(32))


def npy_files():
    for name, array in (("float32", np.arange(12, dtype=np.float32)
                         .reshape(3, 4)),
                        ("uint16", np.zeros((2, 5), np.uint16))):
        buf = io.BytesIO()
        np.save(buf, array)
        put("npy_fuzz", name, buf.getvalue())


def safetensors_files():
    weight = np.arange(6, dtype=np.uint8).reshape(3, 2).tobytes()
    scale = bytes([1, 2, 3])
    header = json.dumps({
        "w": {"dtype": "F8_E4M3", "shape": [3, 2], "data_offsets": [0, 6]},
        "s": {"dtype": "F8_E8M0", "shape": [3, 1], "data_offsets": [6, 9]},
        "__metadata__": {"format": "pt"}}).encode()
    put("safetensors_fuzz", "fp8_fused",
        struct.pack("<Q", len(header)) + header + weight + scale)


def manifests():
    put("manifest_fuzz", "safetensors", json.dumps({"layers": [{
        "layer_id": 3, "dtype": "uint8", "embedding_dim": 264,
        "table_vocab_sizes": [1009, 13, 997],
        "source": {"format": "safetensors",
                   "index": "model.safetensors.index.json",
                   "tensors": ["w", "s"]}}]}))
    put("manifest_fuzz", "npy", json.dumps({"layers": [{
        "layer_id": 7, "dtype": "bfloat16", "embedding_dim": 64,
        "table_vocab_sizes": [5, 4], "replace": True,
        "source": {"format": "npy", "files": ["h0.npy", "../h1.npy"]}}]}))


if __name__ == "__main__":
    lookup_requests()
    gather_requests()
    populate_streams()
    lookup_responses()
    npy_files()
    safetensors_files()
    manifests()
