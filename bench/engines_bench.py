"""The engine adapters' cost: vLLM's lookup(indices, out) and SGLang's
entry_gather(dst, ids, count, table_id) through engram_store.engines
against the same lookups made with the plain client (numpy views of the
same tensors), interleaved in one run against one engramd serving a
DeepSeek-shaped layer (24 heads of FP8 264-byte rows).

    PYTHONPATH=build/python /usr/bin/python3 bench/engines_bench.py \\
        [--engramd=build/server/engramd] [--seconds=3] [--rounds=5]
"""
import numpy as np
import torch

import engram_store
from bench_common import bench_args, calls_per_s, engramd
from engram_store.engines.sglang import EntryGather
from engram_store.engines.vllm import EngramLookup

HEADS, ROWS, ROW = 24, 32768, 264
QUANT = {"format": "fp8_e4m3", "scale": "ue8m0", "block": 32}


def main():
    args = bench_args(__doc__.splitlines()[0])
    with engramd(args.engramd) as address:
        client = engram_store.Client(address)
        rng = np.random.default_rng(1)
        tables = [rng.integers(0, 256, (ROWS, ROW), dtype=np.uint8)
                  for _ in range(HEADS)]
        for t in tables:
            t[:, 256:] = 127
        client.populate(1, tables, quant=QUANT)
        vllm = EngramLookup(client, 1)
        sglang = EntryGather(client)
        print(f"engines_bench: H = {HEADS} FP8 heads of {ROWS} rows, "
              f"{args.rounds} interleaved rounds of {args.seconds:.1f} s "
              f"per figure")
        print(f"  {'call':34} {'adapter/s':>10} {'client/s':>10} "
              f"{'ratio':>7}")
        per_round = args.seconds / args.rounds
        for tokens, packed in ((1, False), (16, False), (64, False),
                               (16, True)):
            indices = torch.from_numpy(
                rng.integers(0, ROWS, (tokens, HEADS)) +
                np.arange(HEADS) * ROWS)
            dtype = torch.uint8 if packed else torch.bfloat16
            out = torch.empty((tokens, HEADS, ROW if packed else 256),
                              dtype=dtype)
            ids = indices.numpy().reshape(tokens, 1, HEADS)
            rows = (out.numpy() if packed else
                    out.view(torch.int16).numpy().view(np.uint16)).reshape(
                        (tokens, 1, HEADS, out.shape[2]))
            name = "uint8" if packed else "bfloat16"
            adapter = plain = 0.0
            for _ in range(args.rounds):
                adapter += calls_per_s(
                    lambda: vllm.lookup(indices, out, packed=packed),
                    per_round)
                plain += calls_per_s(
                    lambda: client.lookup(1, ids, out=rows, output_dtype=name,
                                          id_form="fused"), per_round)
            label = f"vllm lookup T={tokens} {'packed' if packed else 'bf16'}"
            print(f"  {label:34} {adapter / args.rounds:10.0f} "
                  f"{plain / args.rounds:10.0f} {adapter / plain:6.2f}x")
        for count in (64, 1024):
            ids = torch.from_numpy(rng.integers(0, ROWS * HEADS, count))
            dst = torch.empty((count, ROW), dtype=torch.uint8)
            flat = ids.numpy()
            adapter = plain = 0.0
            for _ in range(args.rounds):
                adapter += calls_per_s(
                    lambda: sglang.entry_gather(dst, ids, count, 1, "cpu"),
                    per_round)
                plain += calls_per_s(
                    lambda: client.lookup(1, flat, out=dst.numpy(),
                                          output_dtype="uint8",
                                          id_form="entries"), per_round)
            label = f"sglang entry_gather n={count}"
            print(f"  {label:34} {adapter / args.rounds:10.0f} "
                  f"{plain / args.rounds:10.0f} {adapter / plain:6.2f}x")


if __name__ == "__main__":
    main()
