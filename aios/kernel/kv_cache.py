"""``SlotKVCache``: the running sequences' keys and values, one slot per batch row (a beam is a row).

Layout per layer: ``[slot, kv_head, position, head_dim]``. A sequence joins the batch by taking a
free slot (prefill writes its prompt there, a resume writes its snapshot there) and leaves by
freeing it: no re-padding and no copying of other rows. A forward writes each new token's key and
value at ``(slot, position)`` with one ``index_put_`` per layer, and attention gathers the rows'
slots up to a padded length. Capacity (positions per slot) grows geometrically up to the window.
"""

from __future__ import annotations

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), each [kv_head, length, head_dim]


class SlotKVCache:
    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, head_dim: int, dtype, device, max_len: int):
        self.num_layers, self.num_slots = num_layers, num_slots
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
        new_k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        if self.capacity:
            for layer in range(self.num_layers):
                new_k[layer][:, :, : self.capacity] = self.keys[layer]
                new_v[layer][:, :, : self.capacity] = self.values[layer]
        self.keys, self.values, self.capacity = new_k, new_v, cap

    def ensure_capacity(self, needed: int) -> None:
        if needed > self.capacity:
            self._grow(needed)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # -- the forward's view --------------------------------------------------------------------
    def put(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write new tokens' ``k, v [T, kv_head, head_dim]`` at ``(slots[t], positions[t])``."""
        self.keys[layer][slots, :, positions] = k
        self.values[layer][slots, :, positions] = v

    def gather(self, layer: int, slots: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``slots``, first ``length`` positions: ``[len(slots), kv_head, length, head_dim]``.

        ``index_select`` on the length-sliced cache, not ``cache[slots, :, :length]``: the same copy,
        measured 3-7x faster on CPU (advanced indexing mixed with slices takes a generic gather path)."""
        return self.keys[layer][:, :, :length].index_select(0, slots), self.values[layer][:, :, :length].index_select(0, slots)

    # -- moving KV in and out of slots -------------------------------------------------------------
    @torch.inference_mode()
    def read(self, slot: int, length: int, to: torch.device | str | None = None) -> KV:
        """Copies of a slot's first ``length`` positions, per layer (``[kv_head, length, dim]``)."""
        out = []
        for layer in range(self.num_layers):
            k = self.keys[layer][slot, :, :length]
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
            self.keys[layer][slot, :, :length] = k.to(self.device, non_blocking=True)
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
            self.keys[layer][d, :, :length] = self.keys[layer][s, :, :length]
            self.values[layer][d, :, :length] = self.values[layer][s, :, :length]
