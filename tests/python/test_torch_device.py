"""Device lookups from PyTorch, the way an inference server makes them.

torch tensors for ids and ``out`` (bfloat16 included), the current stream,
rows compared with torch's own gather of the same tables, a CUDA graph
replayed across a replace, and a decode step's two layers in one launch.
Skipped where torch or a CUDA device is missing (CI); on the GPU machine
scripts/gpu_check.sh runs it with that machine's python3, which may lack
pytest: ``python3 tests/python/test_torch_device.py`` runs every case too.
Needs ENGRAM_TEST_ENGRAMD and the package on PYTHONPATH.
"""
import os
import subprocess
import sys
import tempfile
import time

try:
    import torch
except ImportError:  # CI: no torch
    torch = None

import engram_store
from engramd_process import Server

SKIP = ("no torch" if torch is None else
        "no CUDA device" if not torch.cuda.is_available() else None)

try:
    import pytest
    pytestmark = pytest.mark.skipif(SKIP is not None, reason=str(SKIP))
except ImportError:  # run as a script
    pytest = None

PATHS = ((("--direct_reads", "--gpu=0"), "gpu-shared"),
         (("--direct_reads",), "host-mapped"))


def _fp8_tables(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n, 264), dtype=torch.uint8, generator=g)
            for n in sizes]


def _ids(sizes, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (tokens, 1), generator=g)
                        for n in sizes], dim=-1)  # [B, 1, H] int64


def _torch_gather(tables, ids):
    """What the store must return: row [b, l, h] = tables[h][ids[b, l, h]]."""
    return torch.stack([tables[h][ids[..., h]] for h in range(len(tables))],
                       dim=-2)


def test_rows_equal_torchs_gather_on_both_paths():
    sizes = [5000, 3000, 7000, 1000]
    for flags, path in PATHS:
        server = Server(*flags)
        try:
            client = server.client()
            tables = _fp8_tables(sizes, 1)
            client.populate(1, [t.numpy() for t in tables])
            f32 = [torch.randn(n, 64) for n in sizes]
            client.populate(2, [t.numpy() for t in f32])
            assert client.prepare_device(1) == path, \
                client.device_path_note(1)
            stream = torch.cuda.current_stream()
            for tokens in (1, 16, 4096):
                ids = _ids(sizes, tokens, tokens).cuda()
                out = torch.empty(ids.shape + (264,), dtype=torch.uint8,
                                  device="cuda")
                call = client.lookup_device(1, ids, out, stream=stream)
                assert call.path == path
                call.result()
                assert torch.equal(out.cpu(),
                                   _torch_gather(tables, ids.cpu()))
                # float32 rows into a bfloat16 tensor: torch's conversion.
                bf16 = torch.empty(ids.shape + (64,), dtype=torch.bfloat16,
                                   device="cuda")
                client.lookup_device(2, ids, bf16, stream=stream).result()
                assert torch.equal(
                    bf16.cpu(), _torch_gather(f32, ids.cpu()).bfloat16())
            bad = _ids(sizes, 4, 9).cuda()
            bad[2, 0, 1] = 3000
            out = torch.empty(bad.shape + (264,), dtype=torch.uint8,
                              device="cuda")
            try:
                client.lookup_device(1, bad, out).result()
                raise AssertionError("an id out of range was accepted")
            except engram_store.InvalidArgumentError as e:
                assert "ids[9]" in str(e), e
        finally:
            server.stop()


def test_a_graph_of_a_decode_step_follows_a_replace():
    sizes = [4096, 4096, 4096, 4096]
    for flags, path in PATHS:
        server = Server(*flags)
        try:
            client = server.client()
            v1, v2 = _fp8_tables(sizes, 1), _fp8_tables(sizes, 2)
            other = _fp8_tables(sizes, 3)
            client.populate(1, [t.numpy() for t in v1])
            client.populate(2, [t.numpy() for t in other])
            ids = _ids(sizes, 16, 5).cuda()
            outs = [torch.empty(ids.shape + (264,), dtype=torch.uint8,
                                device="cuda") for _ in range(2)]
            status = [torch.zeros(engram_store.cuda.STATUS_WORDS,
                                  dtype=torch.int64, device="cuda")
                      for _ in range(2)]
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                step = client.device_lookups(
                    [(1, ids, outs[0], status[0]),
                     (2, ids, outs[1], status[1])], stream=side)
                step.launch()
                step.result()
                assert step.paths == [path, path]
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side,
                                      capture_error_mode="thread_local"):
                    step.launch()
            want1 = _torch_gather(v1, ids.cpu())
            want2 = _torch_gather(v2, ids.cpu())
            want_other = _torch_gather(other, ids.cpu())
            graph.replay()
            step.result()
            assert torch.equal(outs[0].cpu(), want1)
            assert torch.equal(outs[1].cpu(), want_other)
            client.populate(1, [t.numpy() for t in v2], replace=True)
            deadline = time.time() + 10
            seen_new = False
            while not seen_new and time.time() < deadline:
                graph.replay()
                step.result()
                got = outs[0].cpu()
                seen_new = torch.equal(got, want2)
                assert seen_new or torch.equal(got, want1), \
                    "a replay mixed versions"
                assert torch.equal(outs[1].cpu(), want_other)
            assert seen_new, "replays never reached the new version"
        finally:
            server.stop()


def _deepseek_demo(folder):
    """The token lookups' checkpoint: the one gpu_bundle.sh packed, else
    made here (needs numpy)."""
    made = os.environ.get("ENGRAM_TEST_DEEPSEEK_DEMO")
    if made:
        return made
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                          "make_deepseek_v41_demo.py")
    subprocess.run([sys.executable, script, folder], check=True,
                   stdout=subprocess.DEVNULL)
    return folder


def test_token_lookups_hash_on_the_gpu_as_lookup_tokens_does():
    """A decode step's two Engram layers from token ids on the GPU: rows
    equal to the LookupTokens RPC's, eager and replayed in a CUDA graph."""
    with tempfile.TemporaryDirectory() as d:
        demo = _deepseek_demo(d)
        for flags, path in PATHS:
            server = Server(*flags, f"--load={demo}/engram_manifest.json")
            try:
                client = server.client()
                g = torch.Generator().manual_seed(3)
                tokens = torch.randint(0, 129280, (4, 1), generator=g)
                history = torch.randint(0, 129280, (4, 3), generator=g)
                want = client.lookup_tokens([1, 14], tokens.numpy(),
                                            history=history.numpy(),
                                            output_dtype="bfloat16")
                outs = [torch.empty(w.shape, dtype=torch.bfloat16,
                                    device="cuda") for w in want]
                side = torch.cuda.Stream()
                with torch.cuda.stream(side):
                    step = client.device_token_lookups(
                        [1, 14], tokens.cuda(), outs,
                        history=history.cuda(), stream=side)
                    step.launch()
                    step.result()
                    assert step.paths == [path, path]
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=side,
                                          capture_error_mode="thread_local"):
                        step.launch()

                def same(out, w):
                    bits = out.view(torch.int16).cpu().numpy()
                    return (bits.view(w.dtype) == w).all()
                assert all(same(o, w) for o, w in zip(outs, want))
                for o in outs:
                    o.zero_()
                graph.replay()
                step.result()
                torch.cuda.synchronize()
                assert all(same(o, w) for o, w in zip(outs, want))
            finally:
                server.stop()


if __name__ == "__main__":
    if SKIP:
        print(f"skipped: {SKIP}")
        sys.exit(0)
    failed = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"PASS {name}")
            except Exception as e:  # report every case, then fail
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
