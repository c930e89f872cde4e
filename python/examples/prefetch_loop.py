"""An inference-style loop that prefetches the next Engram layer's rows.

Engram row ids depend only on the input tokens, so at the start of a step
every layer's ids are known; the rows of layer k+1 can be on their way
while layer k computes. This script runs the same steps twice against one
engramd — lookups in line with the compute, then prefetched with
``lookup_async`` into two alternating ``out`` buffers — and prints how much
of the lookup time the prefetch hid.

    PYTHONPATH=build/python /usr/bin/python3 python/examples/prefetch_loop.py \\
        --engramd=build/server/engramd          # starts its own server
    ... prefetch_loop.py --address=HOST:PORT    # or uses a running one

``--compute=sleep`` (default) models a GPU step: the host thread waits
while the device computes, so the CPU is free for the lookup. ``matmul``
keeps a CPU core busy instead (numpy, one BLAS thread).
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads

import numpy as np  # noqa: E402

import engram_store  # noqa: E402

FIRST_LAYER = 1000  # layer ids this example creates (and removes)


def start_engramd(path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.Popen([path, f"--listen={address}", "--metrics_listen="],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if engram_store.Client(address, timeout_s=1).health():
                return proc, address
        except engram_store.Error:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"engramd at {address} did not start")


class Model:
    """The per-layer work the rows feed: `compute_ms` of sleep or matmul."""

    def __init__(self, kind, compute_ms, tokens, hidden):
        self.kind, self.seconds = kind, compute_ms / 1000
        self.x = np.ones((tokens, hidden), np.float32)
        self.w = np.eye(hidden, dtype=np.float32)
        if kind == "matmul":  # how many products take compute_ms
            for _ in range(100):
                self.x @ self.w
            start = time.perf_counter()
            for _ in range(200):
                self.x @ self.w
            each = (time.perf_counter() - start) / 200
            self.reps = max(1, round(self.seconds / each))

    def layer(self, rows):
        # Uses the rows (so a late prefetch would be waited for), then the
        # layer's own work.
        checksum = float(rows[0, 0, 0, 0])
        if self.kind == "sleep":
            time.sleep(self.seconds)
        else:
            for _ in range(self.reps):
                self.x @ self.w
        return checksum


def run_inline(client, model, step_ids, out):
    for layer, ids in enumerate(step_ids):
        model.layer(client.lookup(FIRST_LAYER + layer, ids, out=out[0]))


def run_prefetched(client, model, step_ids, out, keep=None):
    pending = client.lookup_async(FIRST_LAYER, step_ids[0], out=out[0])
    for layer in range(len(step_ids)):
        rows = pending.result()
        if keep is not None:
            keep.append(rows.copy())
        if layer + 1 < len(step_ids):  # the next layer's rows, on their way
            pending = client.lookup_async(FIRST_LAYER + layer + 1,
                                          step_ids[layer + 1],
                                          out=out[(layer + 1) % 2])
        model.layer(rows)


def per_step(ways, steps, rounds):
    """Median seconds per step of each way; rounds alternate the ways so
    drift on a shared machine hits all of them alike."""
    times = {name: [] for name in ways}
    for r in range(rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            for step in range(steps):
                fn(step)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", help="a running engramd (else --engramd)")
    p.add_argument("--engramd", default="build/server/engramd")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="sequences (B)")
    p.add_argument("--tokens", type=int, default=1, help="per sequence (L)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rows", type=int, default=65536, help="per head")
    p.add_argument("--compute", choices=["sleep", "matmul"], default="sleep")
    p.add_argument("--compute_ms", type=float, default=0,
                   help="per layer; 0 = as long as one lookup takes")
    p.add_argument("--steps", type=int, default=20, help="per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--check", action="store_true",
                   help="also check prefetched rows equal lookup()'s")
    args = p.parse_args()

    proc = None
    address = args.address
    if address is None:
        proc, address = start_engramd(args.engramd)
    try:
        client = engram_store.Client(address)
        rng = np.random.default_rng(0)
        for layer in range(args.layers):
            client.populate(FIRST_LAYER + layer, [
                rng.standard_normal((args.rows, args.dim), dtype=np.float32)
                for _ in range(args.heads)])
        shape = (args.batch, args.tokens, args.heads)
        ids = [[rng.integers(0, args.rows, shape, dtype=np.int64)
                for _ in range(args.layers)] for _ in range(args.steps)]
        out = [np.empty(shape + (args.dim,), np.float32) for _ in range(2)]

        def lookups_only(step):
            for k, layer_ids in enumerate(ids[step]):
                client.lookup(FIRST_LAYER + k, layer_ids, out=out[0])

        lookup_s = per_step({"l": lookups_only}, args.steps, 1)["l"]
        compute_ms = args.compute_ms or lookup_s / args.layers * 1000
        model = Model(args.compute, compute_ms, args.batch * args.tokens,
                      256)
        t = per_step({
            "lookup": lookups_only,
            "compute": lambda s: [model.layer(out[0])
                                  for _ in range(args.layers)],
            "inline": lambda s: run_inline(client, model, ids[s], out),
            "prefetched": lambda s: run_prefetched(client, model, ids[s],
                                                   out),
        }, args.steps, args.rounds)
        lookup_s = t["lookup"] / args.layers
        compute_s = t["compute"] / args.layers
        inline_s, prefetched_s = t["inline"], t["prefetched"]
        hideable = args.layers * min(lookup_s, compute_s)
        hidden = (inline_s - prefetched_s) / hideable
        print(f"prefetch_loop: {args.layers} layers, ids {list(shape)}, "
              f"D = {args.dim} float32, compute={args.compute}")
        print(f"  lookup per layer   {lookup_s * 1e3:8.3f} ms")
        print(f"  compute per layer  {compute_s * 1e3:8.3f} ms")
        print(f"  step, inline       {inline_s * 1e3:8.3f} ms")
        print(f"  step, prefetched   {prefetched_s * 1e3:8.3f} ms "
              f"({inline_s / prefetched_s:.2f}x faster)")
        print(f"  lookup time hidden {hidden * 100:8.1f} % "
              f"(of {hideable * 1e3:.3f} ms per step that could be)")
        if args.check:
            kept = []
            run_prefetched(client, model, ids[0], out, keep=kept)
            for k, rows in enumerate(kept):
                want = client.lookup(FIRST_LAYER + k, ids[0][k])
                if not np.array_equal(rows, want):
                    sys.exit(f"layer {k}: prefetched rows differ")
            print(f"  check: prefetched rows of {len(kept)} layers identical")
        for layer in range(args.layers):
            client.remove(FIRST_LAYER + layer)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
