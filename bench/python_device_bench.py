"""Device lookups from Python against torch's own gathers, same tables, one
run (docs/gpu.md "Figures"). Needs torch with CUDA, the engram_store package
on PYTHONPATH and an engramd binary:

    python3 bench/python_device_bench.py --engramd=build/server/engramd

16 heads of 264-byte FP8 rows, ids and out on the GPU, the current stream.
Per shape and path, microseconds per lookup:
  host   - Python launch rate without a sync (what the scheduling thread pays)
  gpu    - CUDA-event time of back-to-back eager calls
  graph  - one replay of a graph of 20 lookups, divided by 20
for a plan (`device_lookups(...).launch()`), a one-off `lookup_device`, and
the peer: torch index_select on a GPU copy (gpu-shared) or a CPU gather +
H2D copy (host-mapped). Then a two-layer plan against a one-layer plan of
the same total rows (target <= 1.2x).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests",
                                "python"))
from engramd_process import Server  # noqa: E402

HEADS, ROW, VOCAB = 16, 264, 115_000
CALLS, GRAPH_CALLS = 200, 20


def host_us(fn, calls=CALLS):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls * 1e6
    torch.cuda.synchronize()
    return host


def gpu_us(fn, calls=CALLS):
    fn()
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    start_event.record()
    for _ in range(calls):
        fn()
    end_event.record()
    end_event.synchronize()
    return start_event.elapsed_time(end_event) * 1e3 / calls


def graph_us(make):
    """`make(stream)`: the call to capture, bound to the capturing stream."""
    side = torch.cuda.Stream()
    fn = make(side)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm up on the capturing stream
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side,
                          capture_error_mode="thread_local"):
        for _ in range(GRAPH_CALLS):
            fn()
    graph.replay()
    return gpu_us(graph.replay, 20) / GRAPH_CALLS


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engramd", required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(1)
    tables = [torch.randint(0, 256, (VOCAB, ROW), dtype=torch.uint8,
                            generator=g) for _ in range(HEADS)]
    fused_gpu = torch.cat(tables).cuda()  # torch's peer: one fused table
    fused_cpu = torch.cat(tables)
    offsets = torch.arange(HEADS, dtype=torch.int64) * VOCAB
    print(f"{HEADS} heads x {VOCAB} rows of {ROW} bytes; us per lookup")
    print("| tokens | path | plan host / gpu / graph | lookup_device host "
          "| peer host / gpu / graph | plan/peer (gpu) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for flags, path in ((("--direct_reads", "--gpu=0"), "gpu-shared"),
                        (("--direct_reads",), "host-mapped")):
        server = Server(*flags, engramd=args.engramd)
        try:
            client = server.client()
            client.populate(1, [t.numpy() for t in tables])
            client.populate(2, [t.numpy() for t in tables])
            assert client.prepare_device(1) == path
            for tokens in (1, 16, 256, 4096):
                ids = torch.randint(0, VOCAB, (tokens, 1, HEADS),
                                    generator=g).cuda()
                out = torch.empty(ids.shape + (ROW,), dtype=torch.uint8,
                                  device="cuda")
                plan = client.device_lookups([(1, ids, out)])
                plan.launch().result()
                if path == "gpu-shared":
                    flat = (ids.cpu() + offsets).cuda().view(-1)

                    def peer():
                        torch.index_select(fused_gpu, 0, flat, out=out.view(
                            -1, ROW))
                else:
                    flat_cpu = (ids.cpu() + offsets).view(-1)
                    staging = torch.empty(flat_cpu.numel(), ROW,
                                          dtype=torch.uint8).pin_memory()

                    def peer():
                        torch.index_select(fused_cpu, 0, flat_cpu,
                                           out=staging)
                        out.view(-1, ROW).copy_(staging, non_blocking=True)
                def plan_on(stream, ids=ids, out=out):
                    return client.device_lookups([(1, ids, out)],
                                                 stream=stream).launch

                ours = (host_us(plan.launch), gpu_us(plan.launch),
                        graph_us(plan_on))
                one_off = host_us(lambda: client.lookup_device(1, ids, out))
                theirs = (host_us(peer), gpu_us(peer),
                          graph_us(lambda stream: peer)
                          if path == "gpu-shared" else float("nan"))
                print(f"| {tokens} | {path} | {ours[0]:.1f} / {ours[1]:.1f}"
                      f" / {ours[2]:.1f} | {one_off:.1f} | {theirs[0]:.1f} / "
                      f"{theirs[1]:.1f} / {theirs[2]:.1f} | "
                      f"{theirs[1] / ours[1]:.2f} |")
            # A decode step's two layers in one launch vs one layer of the
            # same total rows.
            ids = torch.randint(0, VOCAB, (16, 1, HEADS), generator=g).cuda()
            ids2 = torch.randint(0, VOCAB, (32, 1, HEADS), generator=g).cuda()
            outs = [torch.empty(ids.shape + (ROW,), dtype=torch.uint8,
                                device="cuda") for _ in range(2)]
            out2 = torch.empty(ids2.shape + (ROW,), dtype=torch.uint8,
                               device="cuda")
            two = client.device_lookups([(1, ids, outs[0]),
                                         (2, ids, outs[1])])
            one = client.device_lookups([(1, ids2, out2)])
            t_two, t_one = gpu_us(two.launch), gpu_us(one.launch)
            g_two = graph_us(lambda s: client.device_lookups(
                [(1, ids, outs[0]), (2, ids, outs[1])], stream=s).launch)
            g_one = graph_us(lambda s: client.device_lookups(
                [(1, ids2, out2)], stream=s).launch)
            print(f"two layers x 16 tokens vs one layer x 32 ({path}): eager "
                  f"{t_two:.1f} / {t_one:.1f} us = {t_two / t_one:.2f}x, "
                  f"graph {g_two:.1f} / {g_one:.1f} us = "
                  f"{g_two / g_one:.2f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
