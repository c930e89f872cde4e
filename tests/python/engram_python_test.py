"""Drives a real engramd from Python (python3-grpcio + protoc --python_out
stubs) and compares every lookup with numpy indexing.

Usage: engram_python_test.py ENGRAMD_PATH GENERATED_PYTHON_DIR
"""
import os
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

ENGRAMD = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
from engram.v1 import engram_pb2 as pb  # noqa: E402
from engram.v1 import engram_pb2_grpc as pb_grpc  # noqa: E402

DTYPES = {
    pb.DTYPE_FLOAT32: np.float32,
    pb.DTYPE_FLOAT16: np.float16,
    pb.DTYPE_UINT8: np.uint8,
}


class EngramPythonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="engram_py_")
        port_file = os.path.join(cls.dir, "ports")
        cls.proc = subprocess.Popen(
            [ENGRAMD, "--listen=127.0.0.1:0", "--metrics_listen=",
             "--port_file=" + port_file],
            stderr=open(os.path.join(cls.dir, "log"), "w"))
        deadline = time.time() + 30
        while not os.path.exists(port_file):
            if time.time() > deadline or cls.proc.poll() is not None:
                raise RuntimeError("engramd did not start")
            time.sleep(0.02)
        ports = dict(line.split("=") for line in open(port_file).read().split())
        cls.channel = grpc.insecure_channel(
            "127.0.0.1:" + ports["grpc_port"],
            options=[("grpc.max_receive_message_length", 64 << 20)])
        cls.stub = pb_grpc.EngramStoreStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.terminate()
        assert cls.proc.wait(timeout=30) == 0

    def populate(self, layer_id, tables, dtype, chunk_rows=97):
        dim = tables[0].shape[1]

        def requests():
            yield pb.PopulateRequest(header=pb.PopulateHeader(
                layer_id=layer_id,
                config=pb.LayerConfig(
                    table_vocab_sizes=[t.shape[0] for t in tables],
                    embedding_dim=dim, dtype=dtype)))
            # Heads interleaved, rows in reverse order: order must not matter.
            for start in reversed(range(0, max(t.shape[0] for t in tables),
                                        chunk_rows)):
                for h, t in enumerate(tables):
                    if start < t.shape[0]:
                        yield pb.PopulateRequest(chunk=pb.TableChunk(
                            head=h, row_offset=start,
                            data=t[start:start + chunk_rows].tobytes()))
        return self.stub.Populate(requests())

    def test_lookups_match_numpy_for_each_dtype_and_id_encoding(self):
        rng = np.random.default_rng(1)
        for layer_id, dtype in ((101, pb.DTYPE_FLOAT32), (102, pb.DTYPE_FLOAT16),
                                (103, pb.DTYPE_UINT8)):
            sizes, dim = [313, 1000, 7], 24
            np_type = DTYPES[dtype]
            if np_type == np.uint8:
                tables = [rng.integers(0, 256, (n, dim), dtype=np.uint8)
                          for n in sizes]
            else:
                tables = [rng.standard_normal((n, dim)).astype(np_type)
                          for n in sizes]
            info = self.populate(layer_id, tables, dtype).layer
            self.assertEqual(list(info.store_keys),
                             ["engram:l%d:h%d" % (layer_id, h) for h in range(3)])
            B, L, H = 4, 6, 3
            ids = np.stack([rng.integers(0, n, (B, L)) for n in sizes],
                           axis=-1).astype(np.int64)
            expected = np.stack([tables[h][ids[:, :, h]] for h in range(H)],
                                axis=2)
            for request in (
                    pb.LookupRequest(layer_id=layer_id, shape=[B, L, H],
                                     row_ids=ids.tobytes()),
                    pb.LookupRequest(layer_id=layer_id, shape=[B, L, H],
                                     row_ids_list=ids.ravel().tolist())):
                r = self.stub.Lookup(request)
                self.assertEqual(list(r.shape), [B, L, H, dim])
                got = np.frombuffer(r.data, np_type).reshape(r.shape)
                np.testing.assert_array_equal(got, expected)
            if np_type != np.uint8:
                r = self.stub.Lookup(pb.LookupRequest(
                    layer_id=layer_id, shape=[B, L, H],
                    row_ids=ids.tobytes(), as_values=True))
                np.testing.assert_array_equal(
                    np.array(r.values, np.float32).reshape(r.shape),
                    expected.astype(np.float32))

    def test_float16_conversion_matches_numpy_rounding(self):
        rng = np.random.default_rng(2)
        tables = [rng.standard_normal((50, 8)).astype(np.float32) * 1000]
        self.populate(110, tables, pb.DTYPE_FLOAT32)
        ids = np.arange(50, dtype=np.int64)
        r = self.stub.Lookup(pb.LookupRequest(
            layer_id=110, shape=[1, 50, 1], row_ids=ids.tobytes(),
            output_dtype=pb.DTYPE_FLOAT16))
        self.assertEqual(r.dtype, pb.DTYPE_FLOAT16)
        np.testing.assert_array_equal(
            np.frombuffer(r.data, np.float16).reshape(50, 8),
            tables[0].astype(np.float16))

    def test_errors_carry_codes_and_server_keeps_serving(self):
        tables = [np.ones((10, 4), np.float32), np.zeros((20, 4), np.float32)]
        self.populate(120, tables, pb.DTYPE_FLOAT32)
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Lookup(pb.LookupRequest(layer_id=120, shape=[1, 1, 2],
                                              row_ids_list=[10, 0]))
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("row_ids[0, 0, 0] = 10", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            self.populate(120, tables, pb.DTYPE_FLOAT32)
        self.assertEqual(e.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.DescribeLayer(pb.DescribeLayerRequest(layer_id=999))
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        r = self.stub.Lookup(pb.LookupRequest(layer_id=120, shape=[1, 1, 2],
                                              row_ids_list=[9, 19]))
        self.assertEqual(np.frombuffer(r.data, np.float32).tolist(),
                         [1.0] * 4 + [0.0] * 4)
        self.assertEqual(self.stub.Remove(
            pb.RemoveRequest(layer_id=120)).tables_removed, 2)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
