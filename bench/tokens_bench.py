"""LookupTokens (token ids in; the server hashes) against LookupMany of the
same rows with ids hashed beforehand (what an engine does today), both
layers of a step per call, interleaved in one run against one engramd
serving the V4.1-shaped demo checkpoint with 8 heads per order (24 tables
per layer, like the model).

    PYTHONPATH=build/python /usr/bin/python3 bench/tokens_bench.py \\
        [--engramd=build/server/engramd] [--seconds=3] [--rounds=5] \\
        [--direct_reads]

--direct_reads: engramd --direct_reads and a direct-reads client, which
hashes the tokens itself and copies rows out of engramd's memory; the
comparison is that client's lookup_many of ids hashed beforehand.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

import engram_store
from bench_common import bench_args, calls_per_s, engramd

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    args = bench_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--direct_reads", action="store_true"))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable,
                        os.path.join(HERE, "..", "scripts",
                                     "make_deepseek_v41_demo.py"), d,
                        "--heads=8", "--vocab=20000"], check=True,
                       stdout=subprocess.DEVNULL)
        flags = [f"--load={d}/engram_manifest.json"]
        if args.direct_reads:
            flags.append("--direct_reads")
        with engramd(args.engramd, *flags) as address:
            client = engram_store.Client(address,
                                         direct_reads=args.direct_reads)
            hasher = engram_store.EngramHasher(f"{d}/config.json",
                                               f"{d}/token_map.npy")
            rng = np.random.default_rng(1)
            print(f"tokens_bench: two layers of 24 FP8 tables, bfloat16 "
                  f"rows, {args.rounds} interleaved rounds, "
                  f"{args.seconds:.1f} s per figure"
                  + (", direct reads" if args.direct_reads else ""))
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
                tok_outs = [np.empty_like(o) for o in outs]
                # Both fill the same kind of reused step buffers.
                for _ in range(args.rounds):
                    tok += calls_per_s(lambda: client.lookup_tokens(
                        [1, 14], tokens, history=hist,
                        output_dtype="bfloat16", out=tok_outs), per)
                    many += calls_per_s(lambda: client.lookup_many(
                        spec, id_form="fused", output_dtype="bfloat16"), per)
                print(f"  {name:22} {tok / args.rounds:15.0f} "
                      f"{many / args.rounds:14.0f} {tok / many:6.2f}x")


if __name__ == "__main__":
    main()
