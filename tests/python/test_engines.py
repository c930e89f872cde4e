"""The engine adapters (engram_store.engines) with torch tensors against a
real engramd: vLLM's lookup(indices, out, background, packed) and SGLang's
entry_gather(dst, ids, count, table_id, device) over a DeepSeek-shaped FP8
layer (fused ids into 264-byte rows; bf16 values dequantized), checked
against numpy gathers and an independent dequantization. CPU tensors here
(Debian's torch 1.13); the CUDA cases run where a GPU and torch are.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import engram_store  # noqa: E402
from engram_store import InvalidArgumentError  # noqa: E402
from engram_store.engines.sglang import EntryGather  # noqa: E402
from engram_store.engines.vllm import EngramLookup  # noqa: E402
from test_engram_store import Engramd, to_bfloat16_bits  # noqa: E402
from test_quantized import DEEPSEEK, ROW, dequantize  # noqa: E402

SIZES = [61, 7, 130, 40]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def store():
    """One engramd with layer 11: FP8 rows, finite scales near 2^0."""
    rng = np.random.default_rng(12)
    tables = []
    for n in SIZES:
        t = rng.integers(0, 256, (n, ROW), dtype=np.uint8)
        t[:, :256] &= 0xF7  # no S.1111.111 (NaN) weight codes
        t[:, 256:] = rng.integers(110, 140, (n, 8), dtype=np.uint8)
        tables.append(t)
    server = Engramd()
    client = engram_store.Client(server.address)
    client.populate(11, tables, quant=DEEPSEEK)
    yield client, np.concatenate(tables)
    server.stop()


def fused_indices(tokens, h0=0, h1=len(SIZES), seed=0):
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(SIZES)])
    cols = [starts[h] + rng.integers(0, SIZES[h], tokens)
            for h in range(h0, h1)]
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.int64))


def bf16_bits(t):
    return t.view(torch.int16).numpy().view(np.uint16)


def test_vllm_packed_and_dequantized_rows(store):
    client, fused = store
    adapter = EngramLookup(client, 11)
    indices = fused_indices(9)
    packed = torch.empty((9, 4, ROW), dtype=torch.uint8)
    assert adapter.lookup(indices, packed, packed=True) is packed
    assert np.array_equal(packed.numpy(), fused[indices.numpy()])
    values = torch.empty((9, 4, 256), dtype=torch.bfloat16)
    adapter.lookup(indices, values)
    want = to_bfloat16_bits(dequantize(fused[indices.numpy()]))
    assert np.array_equal(bf16_bits(values), want)
    # background: the rows are there once wait() says so.
    again = torch.zeros((9, 4, 256), dtype=torch.bfloat16)
    pending = adapter.lookup(indices, again, background=True)
    assert pending.wait() is again
    assert np.array_equal(bf16_bits(again), want)


def test_vllm_step_buffers_reused_with_new_ids(store):
    """An engine's step reuses its buffers: the adapter keeps their views,
    and every step's rows follow that step's ids (int64 in place, and
    int32 ids, which are copied each step)."""
    client, fused = store
    adapter = EngramLookup(client, 11)
    out = torch.empty((4, 4, ROW), dtype=torch.uint8)
    indices = torch.empty((4, 4), dtype=torch.int64)
    narrow = torch.empty((4, 4), dtype=torch.int32)
    for step in range(3):
        indices.copy_(fused_indices(4, seed=step))
        adapter.lookup(indices, out, packed=True)
        assert np.array_equal(out.numpy(), fused[indices.numpy()])
        narrow.copy_(fused_indices(4, seed=10 + step))
        adapter.lookup(narrow, out, packed=True)
        assert np.array_equal(out.numpy(), fused[narrow.numpy()])


def test_vllm_tensor_parallel_rank_reads_its_heads(store):
    client, fused = store
    rank = EngramLookup(client, 11, heads=(1, 3))
    indices = fused_indices(5, 1, 3, seed=4)
    out = torch.empty((5, 2, ROW), dtype=torch.uint8)
    rank.lookup(indices, out, packed=True)
    assert np.array_equal(out.numpy(), fused[indices.numpy()])
    wrong = indices.clone()
    wrong[2, 0] = 0  # head 0's id in the column of head 1
    with pytest.raises(InvalidArgumentError) as e:
        rank.lookup(wrong, out, packed=True)
    assert "row_ids[2, 0, 0] = 0 is out of range: column 0 is head 1" in \
        str(e.value)


def test_vllm_refuses_mismatched_buffers(store):
    client, _ = store
    adapter = EngramLookup(client, 11)
    indices = fused_indices(3)
    with pytest.raises(TypeError):
        adapter.lookup(indices, torch.empty((3, 4, 256), dtype=torch.float32))
    with pytest.raises(TypeError):  # packed rows need a uint8 out
        adapter.lookup(indices, torch.empty((3, 4, 256), dtype=torch.bfloat16),
                       packed=True)
    with pytest.raises(ValueError):
        adapter.lookup(indices, torch.empty((4, 4, 256), dtype=torch.bfloat16))


def test_sglang_entry_gather(store):
    client, fused = store
    gather = EntryGather(client, tables={3: 11})
    ids = torch.from_numpy(
        np.random.default_rng(2).integers(0, fused.shape[0], 50))
    dst = torch.full((60, ROW), 7, dtype=torch.uint8)
    assert gather.entry_gather(dst, ids, 45, 3, "cpu") is dst
    assert np.array_equal(dst[:45].numpy(), fused[ids[:45].numpy()])
    assert (dst[45:] == 7).all()  # past count: untouched
    values = torch.empty((50, 256), dtype=torch.bfloat16)
    gather.entry_gather(values, ids, 50, 3, "cpu")
    assert np.array_equal(bf16_bits(values),
                          to_bfloat16_bits(dequantize(fused[ids.numpy()])))
    assert gather.entry_gather(dst, ids, 0, 3, "cpu") is dst
    # The same buffers at the next step, with other ids.
    ids.copy_(torch.from_numpy(
        np.random.default_rng(3).integers(0, fused.shape[0], 50)))
    gather.entry_gather(dst, ids, 45, 3, "cpu")
    assert np.array_equal(dst[:45].numpy(), fused[ids[:45].numpy()])
    with pytest.raises(KeyError):
        gather.entry_gather(dst, ids, 4, 5, "cpu")
    with pytest.raises(ValueError):
        gather.entry_gather(dst, ids, 51, 3, "cpu")
    with pytest.raises(InvalidArgumentError) as e:
        gather.entry_gather(dst, torch.tensor([fused.shape[0]]), 1, 3, "cpu")
    assert "outside the fused id range" in str(e.value)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_on_the_gpu(store):
    client, fused = store
    indices = fused_indices(6).cuda()
    out = torch.empty((6, 4, ROW), dtype=torch.uint8, device="cuda")
    EngramLookup(client, 11).lookup(indices, out, packed=True)
    torch.cuda.synchronize()
    assert np.array_equal(out.cpu().numpy(), fused[indices.cpu().numpy()])
    values = torch.empty((6, 4, 256), dtype=torch.bfloat16, device="cuda")
    EngramLookup(client, 11).lookup(indices, values, background=True).wait()
    torch.cuda.synchronize()
    want = to_bfloat16_bits(dequantize(fused[indices.cpu().numpy()]))
    assert np.array_equal(bf16_bits(values.cpu()), want)
    # A tensor-parallel rank's heads, read on the GPU as fused ids.
    ranked = indices[:, 1:3].contiguous()
    part = torch.empty((6, 2, ROW), dtype=torch.uint8, device="cuda")
    EngramLookup(client, 11, heads=(1, 3)).lookup(ranked, part, packed=True)
    torch.cuda.synchronize()
    assert np.array_equal(part.cpu().numpy(), fused[ranked.cpu().numpy()])
    dst = torch.empty((6, ROW), dtype=torch.uint8, device="cuda")
    ids = indices[:, 0].contiguous()
    EntryGather(client).entry_gather(dst, ids, 6, 11, "cuda")
    torch.cuda.synchronize()
    assert np.array_equal(dst.cpu().numpy(), fused[ids.cpu().numpy()])
