"""The C++ ragged-attention kernel (``aios/kernel/csrc/attention.cpp``): it writes the step's keys and
values into the cache, then is right against a float64 softmax written here, and batch invariant by
construction (a row's bits do not depend on the rows beside it, its slot, or the cache's capacity),
in float32 and bfloat16.

``scripts/install-system.sh`` installs g++ and ninja, so the kernel must build where the suite runs:
these tests fail, rather than skip, when it does not.
"""

from __future__ import annotations

import pytest
import torch

from aios.kernel import cpp_kernels
from aios.kernel.model_runner import Chunk, ModelRunner

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def ext():
    k = cpp_kernels.attention()
    assert k is not None, "the C++ attention kernel did not build (g++ and ninja come from install-system.sh)"
    return k


def _cache(dtype, slots=6, kvh=2, cap=192, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(slots, kvh, cap, d, generator=g).to(dtype), torch.randn(slots, kvh, cap, d, generator=g).to(dtype))


def _blocks(kc):
    """The kernel's key layout: ``[S, KVH, cap, D]`` -> ``[S, KVH, cap/16, D, 16]`` (16-key blocks, transposed)."""
    S, KVH, cap, D = kc.shape
    return kc.reshape(S, KVH, cap // 16, 16, D).transpose(-1, -2).contiguous()


def _plain(kb):
    S, KVH, n, D, B = kb.shape
    return kb.transpose(-1, -2).reshape(S, KVH, n * B, D)


def _call(ext, q, kc, vc, slot, seen, scale):
    """Attention of rows that see ``seen`` keys: each row's own key/value is the one at ``seen - 1``,
    passed as the step's new k, v (rewritten with the value it already holds). ``kc`` is plain."""
    pos = seen - 1
    k = torch.stack([kc[s, :, p] for s, p in zip(slot.tolist(), pos.tolist(), strict=True)])
    v = torch.stack([vc[s, :, p] for s, p in zip(slot.tolist(), pos.tolist(), strict=True)])
    return ext.ragged_attention(q, k, v, _blocks(kc), vc, slot, pos, scale)


def _reference(q, kc, vc, slot, seen, scale):
    """float64 softmax attention of each (row, head) over its slot's first ``seen`` keys."""
    T, H, _ = q.shape
    grp = H // kc.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            k = kc[slot[t], h // grp, : seen[t]].double()
            v = vc[slot[t], h // grp, : seen[t]].double()
            out[t, h] = torch.softmax(k @ q[t, h].double() * scale, 0) @ v
    return out


@pytest.mark.parametrize("d", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_softmax(ext, dtype, d):
    kc, vc = _cache(dtype, d=d)
    q = torch.randn(5, 6, d).to(dtype)
    slot, seen = torch.tensor([3, 0, 5, 3, 1]), torch.tensor([1, 17, 192, 64, 100])
    got = _call(ext, q, kc, vc, slot, seen, 0.17).double()
    assert got.shape == q.shape
    ref = _reference(q, kc, vc, slot, seen, 0.17)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the output is rounded to 8 bits of mantissa
    assert (got - ref).abs().max().item() < tol
    one_key = _call(ext, q[:1], kc, vc, slot[:1], seen[:1], 0.17)[0]  # softmax over one key is 1
    assert torch.equal(one_key, vc[3, [0, 0, 0, 1, 1, 1], 0])  # heads 0-2 share KV head 0, 3-5 KV head 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_bits_do_not_depend_on_the_batch_slot_or_capacity(ext, dtype):
    kc, vc = _cache(dtype)
    q = torch.randn(5, 6, 32).to(dtype)
    slot, seen = torch.tensor([3, 0, 5, 3, 1]), torch.tensor([1, 17, 192, 64, 100])
    batch = _call(ext, q, kc, vc, slot, seen, 0.17)
    for t in range(5):  # alone
        alone = _call(ext, q[t : t + 1], kc, vc, slot[t : t + 1], seen[t : t + 1], 0.17)
        assert torch.equal(alone[0], batch[t])
    order = torch.tensor([4, 2, 0, 3, 1])  # reordered, with other neighbours
    assert torch.equal(_call(ext, q[order], kc, vc, slot[order], seen[order], 0.17), batch[order])
    # row 3 moved to another slot of a bigger cache (its keys copied, garbage everywhere else)
    big_k, big_v = _cache(dtype, slots=9, cap=512, seed=1)
    big_k[7, :, :192], big_v[7, :, :192] = kc[3], vc[3]
    moved = _call(ext, q[3:4], big_k, big_v, torch.tensor([7]), seen[3:4], 0.17)
    assert torch.equal(moved[0], batch[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_prompt_chunk_rows_equal_the_same_rows_alone(ext, dtype):
    """Consecutive positions of one slot are attended together (each key loaded once per tile); each
    row must still get exactly the bits it gets as a lone decode row."""
    kc, vc = _cache(dtype, cap=256)
    n = 11  # tiles of 8 and 3 rows (24 and 9 query vectors: 3 query heads per KV head)
    q = torch.randn(n + 2, 6, 32).to(dtype)
    slot = torch.tensor([2] * n + [4, 2])  # then a row of another slot, and a non-consecutive one
    seen = torch.tensor(list(range(90, 90 + n)) + [30, 200])
    chunk = _call(ext, q, kc, vc, slot, seen, 0.17)
    for t in range(n + 2):
        assert torch.equal(chunk[t], _call(ext, q[t : t + 1], kc, vc, slot[t : t + 1], seen[t : t + 1], 0.17)[0]), t
    ref = _reference(q, kc, vc, slot, seen, 0.17)
    assert (chunk.double() - ref).abs().max().item() < (1e-5 if dtype == torch.float32 else 2e-2)


def test_writes_the_new_rows_before_attending(ext):
    """A prompt chunk's rows see each other's new keys: row 1 (position 1) attends to row 0's key too."""
    kb, vc = torch.zeros(2, 1, 4, 16, 16), torch.zeros(2, 1, 64, 16)
    k, v = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    q = torch.randn(2, 2, 16)
    o = ext.ragged_attention(q, k, v, kb, vc, torch.tensor([1, 1]), torch.tensor([0, 1]), 0.25)
    kc = _plain(kb)
    assert torch.equal(kc[1, 0, :2], k[:, 0]) and torch.equal(vc[1, 0, :2], v[:, 0])
    assert not kc[0].any() and not kc[1, :, 2:].any()  # nothing else written
    assert torch.equal(o[0], v[0, 0].expand(2, 16))  # position 0 sees only itself
    ref = _reference(q[1:], kc, vc, torch.tensor([1]), torch.tensor([2]), 0.25)
    assert (o[1].double() - ref[0]).abs().max() < 1e-6


def test_bad_calls_are_refused(ext):
    kc, vc = _cache(torch.float32)
    kc = _blocks(kc)
    q, k = torch.randn(1, 6, 32), torch.randn(1, 2, 32)
    before = kc.clone()
    for slot, pos in ((6, 5), (0, 192), (-1, 3), (0, -1)):
        with pytest.raises(RuntimeError, match="out of the cache"):
            ext.ragged_attention(q, k, k, kc, vc, torch.tensor([slot]), torch.tensor([pos]), 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        ext.ragged_attention(q.bfloat16(), k, k, kc, vc, torch.tensor([0]), torch.tensor([3]), 1.0)
    with pytest.raises(RuntimeError, match="shapes|key cache"):  # a plain key cache is not the kernel's layout
        ext.ragged_attention(q, k, k, vc, vc, torch.tensor([0]), torch.tensor([3]), 1.0)
    assert torch.equal(kc, before)  # a refused call wrote nothing


def test_runner_uses_it_and_agrees_with_the_eager_path(ext, tiny_lm):
    """The runner picks the kernel on CPU; the eager chunked path computes the same greedy tokens."""
    prompt = list(range(3, 40))
    outs = []
    for cpp in (True, False):
        runner = ModelRunner(tiny_lm[0], 4, cpp_attention=cpp)
        assert (runner.cpp is not None) == cpp
        (slot,) = runner.alloc(1)
        ids = list(prompt)
        logits = runner.run([Chunk(slot, ids, 0)])
        for _ in range(24):
            ids.append(int(logits[0].argmax()))
            logits = runner.run([Chunk(slot, ids[-1:], len(ids) - 1)])
        outs.append(ids[len(prompt) :])
    assert outs[0] == outs[1]
