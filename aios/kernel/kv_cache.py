"""``SlotKVCache``: the running sequences' keys and values, one slot per batch row (a beam is a row).

Layout per layer: values ``[slot, kv_head, position, head_dim]``; keys the same, or, for the C++
attention kernel (``key_block=16``), transposed in blocks of 16 positions,
``[slot, kv_head, position // 16, head_dim, position % 16]``: there 16 keys' dot products with a
query are one vector FMA chain over ``head_dim`` (see ``csrc/attention.cpp``). ``read``/``write``
speak the plain layout either way, so snapshots, spills and prefix reuse do not see the difference.
A sequence joins the batch by taking a
free slot (prefill writes its prompt there, a resume writes its snapshot there) and leaves by
freeing it: no re-padding and no copying of other rows. A forward writes each new token's key and
value at ``(slot, position)`` with one ``index_put_`` per layer, and attention gathers the rows'
slots up to a padded length. Capacity (positions per slot) grows geometrically up to the window.
"""

from __future__ import annotations

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), each [kv_head, length, head_dim]


class SlotKVCache:
    def __init__(
        self, num_layers: int, num_slots: int, kv_heads: int, head_dim: int, dtype, device, max_len: int, key_block: int = 0
    ):
        self.num_layers, self.num_slots = num_layers, num_slots
        self.key_block = key_block  # 0: plain keys; B: keys transposed in blocks of B positions (B divides 64)
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype, self.device, self.max_len = dtype, device, max_len
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._grow(64)

    # -- capacity ------------------------------------------------------------------------------
    @torch.inference_mode()
    def _grow(self, needed: int) -> None:
        cap = max(needed, self.capacity * 2, 64)
        cap = min(-(-cap // 64) * 64, max(-(-self.max_len // 64) * 64, -(-needed // 64) * 64))
        shape = (self.num_slots, self.kv_heads, cap, self.head_dim)
        new_k = [torch.zeros(self._key_shape(cap), dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        if self.capacity:
            for layer in range(self.num_layers):
                new_k[layer][:, :, : self._key_len(self.capacity)] = self.keys[layer]
                new_v[layer][:, :, : self.capacity] = self.values[layer]
        self.keys, self.values, self.capacity = new_k, new_v, cap

    def _key_shape(self, cap: int) -> tuple[int, ...]:
        if self.key_block:
            return (self.num_slots, self.kv_heads, cap // self.key_block, self.head_dim, self.key_block)
        return (self.num_slots, self.kv_heads, cap, self.head_dim)

    def _key_len(self, length: int) -> int:
        """Entries of dim 2 of the key cache that hold positions ``[0, length)``."""
        return -(-length // self.key_block) if self.key_block else length

    def _keys_plain(self, layer: int, slots, length: int) -> torch.Tensor:
        """Keys of ``slots`` (an int or an index tensor), positions ``[0, length)``, in the plain layout."""
        k = self.keys[layer][slots, :, : self._key_len(length)]
        if self.key_block:  # [..., n, D, B] -> [..., n * B, D]
            k = k.transpose(-1, -2).flatten(-3, -2)[..., :length, :]
        return k

    def _set_keys(self, layer: int, slots, k: torch.Tensor) -> None:
        """``k [..., kv_head, length, head_dim]`` (plain) into positions ``[0, length)`` of ``slots``. With
        key blocks, the last block's positions past ``length`` are zeroed (nothing reads them before a
        forward writes them)."""
        length = k.shape[-2]
        if self.key_block:
            n = self._key_len(length)
            pad = n * self.key_block - length
            if pad:
                k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], dim=-2)
            k = k.unflatten(-2, (n, self.key_block)).transpose(-1, -2)
            length = n
        self.keys[layer][slots, :, :length] = k

    def ensure_capacity(self, needed: int) -> None:
        if needed > self.capacity:
            self._grow(needed)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # -- the forward's view --------------------------------------------------------------------
    def put(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write new tokens' ``k, v [T, kv_head, head_dim]`` at ``(slots[t], positions[t])`` (plain keys only:
        the C++ kernel, the only user of key blocks, writes its own)."""
        assert not self.key_block, "put/gather are the torch path's; key blocks are the C++ kernel's"
        self.keys[layer][slots, :, positions] = k
        self.values[layer][slots, :, positions] = v

    def gather(self, layer: int, slots: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``slots``, first ``length`` positions: ``[len(slots), kv_head, length, head_dim]``.

        ``index_select`` on the length-sliced cache, not ``cache[slots, :, :length]``: the same copy,
        measured 3-7x faster on CPU (advanced indexing mixed with slices takes a generic gather path)."""
        assert not self.key_block, "put/gather are the torch path's; key blocks are the C++ kernel's"
        return self.keys[layer][:, :, :length].index_select(0, slots), self.values[layer][:, :, :length].index_select(0, slots)

    # -- moving KV in and out of slots -------------------------------------------------------------
    @torch.inference_mode()
    def read(self, slot: int, length: int, to: torch.device | str | None = None) -> KV:
        """Copies of a slot's first ``length`` positions, per layer (``[kv_head, length, dim]``)."""
        out = []
        for layer in range(self.num_layers):
            k = self._keys_plain(layer, slot, length)
            v = self.values[layer][slot, :, :length]
            if to is not None and torch.device(to) != k.device:
                out.append((k.to(to, copy=True), v.to(to, copy=True)))
            else:
                out.append((k.clone(), v.clone()))
        return out

    @torch.inference_mode()
    def write(self, slot: int, kv: KV) -> None:
        length = kv[0][0].shape[1]
        self.ensure_capacity(length)
        for layer, (k, v) in enumerate(kv):
            self._set_keys(layer, slot, k.to(self.device, non_blocking=True))
            self.values[layer][slot, :, :length] = v.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def clear(self, slots: list[int]) -> None:
        """Zero ``slots`` (attention multiplies a row's masked tail by 0: it must hold finite numbers)."""
        idx = torch.tensor(slots, device=self.device)
        for layer in range(self.num_layers):
            self.keys[layer][idx] = 0
            self.values[layer][idx] = 0

    @torch.inference_mode()
    def copy_slots(self, src: list[int], dst: list[int], length: int) -> None:
        """``dst[i] <- src[i]`` for the first ``length`` positions (beam reordering)."""
        if not src:
            return
        s = torch.tensor(src, device=self.device)
        d = torch.tensor(dst, device=self.device)
        for layer in range(self.num_layers):
            n = self._key_len(length)  # whole key blocks: the positions past length are free in dst
            self.keys[layer][d, :, :n] = self.keys[layer][s, :, :n]
            self.values[layer][d, :, :length] = self.values[layer][s, :, :length]
