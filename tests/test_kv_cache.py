"""``SlotKVCache`` with keys in the C++ kernel's transposed 16-key blocks speaks the plain layout at its
edges: what ``write`` puts in, ``read`` gives back bit for bit, across capacity growth and slot copies,
and the blocks hold each key where the kernel looks for it (``[slot, head, p // 16, d, p % 16]``)."""

from __future__ import annotations

import pytest
import torch

from aios.kernel.kv_cache import SlotKVCache


def _kv(layers: int, length: int, seed: int, kvh: int = 3, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(kvh, length, d, generator=g), torch.randn(kvh, length, d, generator=g)) for _ in range(layers)]


@pytest.mark.parametrize("key_block", [0, 16])
def test_write_read_round_trip_across_growth_and_copies(key_block):
    cache = SlotKVCache(2, 4, 3, 8, torch.float32, "cpu", max_len=512, key_block=key_block)
    a, b = _kv(2, 37, 0), _kv(2, 70, 1)  # 37: a partial last block
    cache.write(1, a)
    cache.write(2, b)  # 70 > 64: the cache grows, slot 1 must survive it
    assert cache.capacity >= 70
    for (k, v), (rk, rv) in zip(a, cache.read(1, 37), strict=True):
        assert torch.equal(k, rk) and torch.equal(v, rv)
    cache.copy_slots([2], [0], 70)
    for (k, v), (rk, rv) in zip(b, cache.read(0, 70), strict=True):
        assert torch.equal(k, rk) and torch.equal(v, rv)
    prefix = cache.read(2, 20)  # a prefix of a longer sequence
    assert all(torch.equal(k[:, :20], rk) for (k, _), (rk, _) in zip(b, prefix, strict=True))
    cache.clear([1])
    assert not any(cache.keys[layer][1].any() or cache.values[layer][1].any() for layer in range(2))
    for (k, _), (rk, _) in zip(b, cache.read(2, 70), strict=True):  # clearing slot 1 left slot 2 alone
        assert torch.equal(k, rk)


def test_blocked_keys_sit_where_the_kernel_reads_them():
    cache = SlotKVCache(1, 2, 3, 8, torch.float32, "cpu", max_len=128, key_block=16)
    (kv,) = _kv(1, 40, 2)
    cache.write(1, [kv])
    keys = cache.keys[0]
    assert keys.shape == (2, 3, cache.capacity // 16, 8, 16)
    for p in (0, 15, 16, 39):
        assert torch.equal(keys[1, :, p // 16, :, p % 16], kv[0][:, p])


def test_put_and_gather_refuse_key_blocks():
    """The eager path's ``put``/``gather`` index plain keys; a blocked cache is the C++ kernel's alone."""
    cache = SlotKVCache(1, 2, 3, 8, torch.float32, "cpu", max_len=128, key_block=16)
    with pytest.raises(AssertionError):
        cache.gather(0, torch.tensor([0]), 16)
