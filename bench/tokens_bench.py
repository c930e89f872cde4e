"""LookupTokens (token ids in; the server hashes) against LookupMany of the
same rows with ids hashed beforehand (what an engine does today), both
layers of a step per call, interleaved in one run against one engramd
serving the V4.1-shaped demo checkpoint with 8 heads per order (24 tables
per layer, like the model).

    PYTHONPATH=build/python /usr/bin/python3 bench/tokens_bench.py \\
        [--engramd=build/server/engramd] [--seconds=3] [--rounds=5]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import engram_store

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calls_per_s(fn, seconds):
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
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable,
                        os.path.join(HERE, "..", "scripts",
                                     "make_deepseek_v41_demo.py"), d,
                        "--heads=8", "--vocab=20000"], check=True,
                       stdout=subprocess.DEVNULL)
        address = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [args.engramd, f"--listen={address}", "--metrics_listen=",
             f"--load={d}/engram_manifest.json"])
        try:
            client = engram_store.Client(address)
            deadline = time.time() + 60
            while True:
                try:
                    if client.health():
                        break
                except engram_store.Error:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("engramd did not start")
                time.sleep(0.05)
            hasher = engram_store.EngramHasher(f"{d}/config.json",
                                               f"{d}/token_map.npy")
            rng = np.random.default_rng(1)
            print(f"tokens_bench: two layers of 24 FP8 tables, bfloat16 "
                  f"rows, {args.rounds} interleaved rounds, "
                  f"{args.seconds:.1f} s per figure")
            print(f"  {'shape':22} {'LookupTokens/s':>15} "
                  f"{'hashed+Many/s':>14} {'ratio':>7}")
            per = args.seconds / args.rounds
            for name, b, t, h in (("decode B=1", 1, 1, 3),
                                  ("decode B=16", 16, 1, 3),
                                  ("decode B=64", 64, 1, 3),
                                  ("prefill B=1 T=1024", 1, 1024, 0)):
                tokens = rng.integers(0, 129280, (b, t))
                history = rng.integers(0, 129280, (b, h))
                hist = history if h else None
                ids = [hasher.hash(layer, tokens, hist, fused=True)
                       for layer in (1, 14)]
                outs = [np.empty((b, t, 24, 256), np.uint16)
                        for _ in range(2)]
                spec = [(1, ids[0], outs[0]), (14, ids[1], outs[1])]
                assert all(np.array_equal(x, y) for x, y in zip(
                    client.lookup_tokens([1, 14], tokens, history=hist,
                                         output_dtype="bfloat16"),
                    client.lookup_many(spec, id_form="fused",
                                       output_dtype="bfloat16")))
                tok = many = 0.0
                for _ in range(args.rounds):
                    tok += calls_per_s(lambda: client.lookup_tokens(
                        [1, 14], tokens, history=hist,
                        output_dtype="bfloat16"), per)
                    many += calls_per_s(lambda: client.lookup_many(
                        spec, id_form="fused", output_dtype="bfloat16"), per)
                print(f"  {name:22} {tok / args.rounds:15.0f} "
                      f"{many / args.rounds:14.0f} {tok / many:6.2f}x")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
