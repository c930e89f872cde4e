"""engram_store (Python) lookups against peers measured in the same run:
the C++ client's own loop (same process, same connection), a grpcio stub
generated from the same proto (what Python users write today), and the
same Python call with direct reads (same host).

    PYTHONPATH=build/python /usr/bin/python3 bench/python_lookup_bench.py \\
        [--engramd=build/server/engramd] [--seconds=3] [--rounds=5]
"""
import os
import statistics
import sys

import numpy as np

import engram_store
from bench_common import bench_args, calls_per_s, engramd

H, D, ROWS = 16, 64, 65536


def main():
    args = bench_args(__doc__.splitlines()[0])
    with engramd(args.engramd, "--direct_reads") as address:
        c = engram_store.Client(address)
        direct = engram_store.Client(address, direct_reads=True)
        rng = np.random.default_rng(1)
        c.populate(1, [rng.standard_normal((ROWS, D), dtype=np.float32)
                       for _ in range(H)])
        stub = None
        grpc_dir = os.path.join(os.path.dirname(engram_store.__file__), "..")
        try:
            sys.path.insert(0, grpc_dir)
            import grpc
            from engram.v1 import engram_pb2 as pb
            from engram.v1 import engram_pb2_grpc as pb_grpc
            channel = grpc.insecure_channel(
                address, options=[("grpc.max_receive_message_length",
                                   256 << 20)])
            stub = pb_grpc.EngramStoreStub(channel)
        except ImportError:
            pass
        print(f"python_lookup_bench: H = {H}, D = {D} float32, {ROWS} rows "
              f"per head, 1 caller, median of {args.rounds} alternating rounds "
              f"({args.seconds} s per figure)")
        print(f"  {'shape':<20} {'py rows/s':>12} {'C++ rows/s':>12} "
              f"{'grpcio r/s':>12} {'direct r/s':>12} {'py/C++':>7} "
              f"{'py/grpcio':>9} {'dir/py':>7}")
        for name, b, length in [("decode B=1", 1, 1), ("decode B=16", 16, 1),
                                ("decode B=256", 256, 1),
                                ("prefill L=4096", 1, 4096)]:
            ids = rng.integers(0, ROWS, (b, length, H), dtype=np.int64)
            out = np.empty((b, length, H, D), np.float32)
            rows = b * length * H
            slot = args.seconds / args.rounds
            ways = {
                "py": lambda: calls_per_s(lambda: c.lookup(1, ids, out=out),
                                          slot),
                "cpp": lambda: c._c.bench_lookups(
                    1, ids, list(ids.shape), out, slot) / slot,
                "direct": lambda: calls_per_s(
                    lambda: direct.lookup(1, ids, out=out), slot),
            }
            if stub is not None:
                req = pb.LookupRequest(layer_id=1, shape=list(ids.shape),
                                       row_ids=ids.tobytes())

                def via_grpcio():
                    r = stub.Lookup(req)
                    np.frombuffer(r.data, np.float32).reshape(out.shape)
                ways["grpcio"] = lambda: calls_per_s(via_grpcio, slot)
            # Rounds alternate the ways, so drift on a shared box hits all
            # of them alike; each figure is the median round.
            runs = {way: [] for way in ways}
            for _ in range(args.rounds):
                for way, run in ways.items():
                    runs[way].append(run() * rows)
            fig = {way: statistics.median(r) for way, r in runs.items()}
            g = fig.get("grpcio", float("nan"))
            print(f"  {name:<20} {fig['py']:>12.0f} {fig['cpp']:>12.0f} "
                  f"{g:>12.0f} {fig['direct']:>12.0f} "
                  f"{fig['py'] / fig['cpp']:>6.2f}x {fig['py'] / g:>8.2f}x "
                  f"{fig['direct'] / fig['py']:>6.2f}x")


if __name__ == "__main__":
    main()
