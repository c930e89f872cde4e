"""engram_store (Python) lookups against peers measured in the same run:
the C++ client's own loop (same process, same connection), a grpcio stub
generated from the same proto (what Python users write today), and the
same Python call with direct reads (same host).

    PYTHONPATH=build/python /usr/bin/python3 bench/python_lookup_bench.py \\
        [--engramd=build/server/engramd] [--seconds=3] [--rounds=5]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

import engram_store

H, D, ROWS = 16, 64, 65536


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rate(fn, seconds):
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engramd", default="build/server/engramd")
    p.add_argument("--seconds", type=float, default=3,
                   help="per figure, split over the rounds")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen([args.engramd, f"--listen={address}",
                               "--metrics_listen=", "--direct_reads"],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if engram_store.Client(address, timeout_s=1).health():
                    break
            except engram_store.Error:
                time.sleep(0.05)
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
                "py": lambda: rate(lambda: c.lookup(1, ids, out=out), slot),
                "cpp": lambda: c._c.bench_lookups(
                    1, ids, list(ids.shape), out, slot) / slot,
                "direct": lambda: rate(lambda: direct.lookup(1, ids, out=out),
                                       slot),
            }
            if stub is not None:
                req = pb.LookupRequest(layer_id=1, shape=list(ids.shape),
                                       row_ids=ids.tobytes())

                def via_grpcio():
                    r = stub.Lookup(req)
                    np.frombuffer(r.data, np.float32).reshape(out.shape)
                ways["grpcio"] = lambda: rate(via_grpcio, slot)
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
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
