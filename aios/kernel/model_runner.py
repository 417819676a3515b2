"""Runs the model: per-sequence prefill and one batched decode forward for all running rows.

Exactness design (measured on this CPU): a row's result of a matmul depends on the batch size M
(M=1 takes a gemv path), but with a *fixed* M the row's result does not depend on its position in
the batch or on the other rows. So with ``batch_invariant`` every decode forward runs at exactly
``max_rows`` rows (free slots are dummy rows), and attention is computed per row over only that
row's own keys. A request then produces the same tokens alone or in any batch, suspended or not,
which is what makes snapshot/restore *exact* under any schedule.

KV layout: a ``SlotKVCache`` with ``max_rows`` slots per layer, tensor ``[slot, kv_head, pos, dim]``.
Row ``i`` of an invariant decode batch *is* slot ``i``, so joining a batch means writing a prompt's
KV into a free slot (prefill or snapshot restore), leaving means marking the slot free: no
re-padding, no copying of other rows, and steady-state decode writes one position per row per
layer (one ``index_put_``). It is the slot cache that makes the "left-padded DynamicCache rebuilt
on membership change" design unnecessary. Capacity (positions per slot) grows geometrically.

Attention goes through a function registered with transformers' ``AttentionInterface`` under
``"aios_ragged"``; it receives the per-row (slot, length) list as the ``aios_batch`` keyword, which
transformers forwards from ``model(...)`` to the attention call. Without that keyword (e.g. plain
``model.generate`` on the same model) it falls back to SDPA, so the model stays usable elsewhere.
Registration is a name-to-function entry (no per-kernel state), so several kernels can share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTN_NAME = "aios_ragged"


@dataclass
class RaggedBatch:
    """Per-row attention extents for one forward: ``rows[i] = (slot, n_keys)``; slot < 0 is a dummy row.

    ``q_start`` is the position of the first query token (prefill with existing keys needs it).
    """

    rows: list[tuple[int, int]]
    q_start: int = 0


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA per row over that row's own valid keys (no padding ever enters a row's softmax)."""
    batch: RaggedBatch | None = kwargs.get("aios_batch")
    if batch is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    bsz, n_heads, q_len, head_dim = query.shape
    out = query.new_zeros(bsz, q_len, n_heads, head_dim)
    gqa = key.shape[1] != n_heads
    sdpa = F.scaled_dot_product_attention
    for i, (slot, n) in enumerate(batch.rows):
        if slot < 0:
            continue
        k = key[slot : slot + 1, :, :n]
        v = value[slot : slot + 1, :, :n]
        if q_len == 1:
            o = sdpa(query[i : i + 1], k, v, scale=scaling, enable_gqa=gqa)
        elif n == q_len:
            o = sdpa(query[i : i + 1], k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:  # queries continue existing keys: causal mask offset by the keys already there
            qpos = torch.arange(n - q_len, n, device=query.device)[:, None]
            mask = torch.arange(n, device=query.device)[None, :] <= qpos
            o = sdpa(query[i : i + 1], k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        out[i] = o[0].transpose(0, 1)
    return out, None


def register_attention() -> None:
    """Register ``aios_ragged`` with transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, ragged_attention)


class SlotKVCache:
    """Batch KV cache with a fixed number of slots; duck-types the part of ``Cache`` Llama-style models use.

    The runner sets a *plan* before each forward (which slot each row writes, at which position);
    ``update`` writes the new keys/values there and returns the full slot buffers, which the ragged
    attention slices per row.
    """

    is_compileable = False

    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, head_dim: int, dtype, device, max_len: int):
        self.num_layers, self.num_slots = num_layers, num_slots
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype, self.device, self.max_len = dtype, device, max_len
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._plan: tuple | None = None
        self._grow(64)

    # -- capacity ------------------------------------------------------------------------------
    @torch.inference_mode()
    def _grow(self, needed: int) -> None:
        cap = max(needed, self.capacity * 2, 64)
        cap = min(-(-cap // 64) * 64, max(self.max_len, needed))
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

    # -- plans ---------------------------------------------------------------------------------
    def plan_prefill(self, slot: int, start: int, length: int) -> None:
        self.ensure_capacity(start + length)
        self._plan = ("prefill", slot, start, length)

    def plan_decode(self, slots: torch.Tensor, positions: torch.Tensor, max_pos: int) -> None:
        self.ensure_capacity(max_pos + 1)
        self._plan = ("decode", slots, positions)

    # -- Cache protocol (the parts models call) --------------------------------------------------
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        plan = self._plan
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if plan[0] == "prefill":
            _, slot, start, length = plan
            k_buf[slot, :, start : start + length] = key_states[0]
            v_buf[slot, :, start : start + length] = value_states[0]
        else:
            _, slots, positions = plan
            k_buf[slots, :, positions] = key_states[:, :, 0]
            v_buf[slots, :, positions] = value_states[:, :, 0]
        return k_buf, v_buf

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    # -- moving KV in and out of slots -------------------------------------------------------------
    @torch.inference_mode()
    def read(self, slot: int, length: int, to: torch.device | str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
    def write(self, slot: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        length = kv[0][0].shape[1]
        self.ensure_capacity(length)
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][slot, :, :length] = k.to(self.device, non_blocking=True)
            self.values[layer][slot, :, :length] = v.to(self.device, non_blocking=True)

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


class ModelRunner:
    """Owns the model's forward passes and the batch KV cache (one per engine)."""

    def __init__(self, model, max_rows: int, batch_invariant: bool = True, max_len: int | None = None):
        register_attention()
        self.model = model
        model.config._attn_implementation = ATTN_NAME
        cfg = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_rows = max_rows
        self.batch_invariant = batch_invariant
        self.vocab_size = cfg.vocab_size
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.max_len = max_len or getattr(cfg, "max_position_embeddings", 2048)
        # one extra slot (index max_rows) is scratch space: dummy rows write their junk KV there, never
        # into a free slot that a sequence prefilled earlier in the same step
        self.cache = SlotKVCache(
            cfg.num_hidden_layers, max_rows + 1, kv_heads, head_dim, self.dtype, self.device, self.max_len
        )
        self.scratch_slot = max_rows
        self.free_slots: list[int] = list(range(max_rows))

    # -- slots -------------------------------------------------------------------------------------
    def alloc(self, n: int) -> list[int]:
        if n > len(self.free_slots):
            raise RuntimeError(f"need {n} batch slots, {len(self.free_slots)} free")
        self.free_slots.sort()
        got, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return got

    def release(self, slots: list[int]) -> None:
        self.free_slots.extend(s for s in slots if s not in self.free_slots)

    # -- forwards ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], start: int = 0) -> torch.Tensor:
        """Run ``ids`` (positions ``start..``) for one slot; return float32 logits of the last position."""
        n = len(ids)
        self.cache.plan_prefill(slot, start, n)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + n, device=self.device)[None]
        out = self.model(
            input_ids=input_ids,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
            aios_batch=RaggedBatch([(slot, start + n)], q_start=start),
        )
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def decode(self, rows: list[tuple[int, int, int]]) -> torch.Tensor:
        """One token for each ``(slot, token, position)`` row; returns float32 logits ``[len(rows), vocab]``.

        Invariant mode runs all ``max_rows`` slots (free ones as dummy rows) so the matmul shapes,
        hence every row's numerics, never depend on how many requests share the batch.
        """
        if self.batch_invariant:
            tokens = [0] * self.max_rows
            positions = [0] * self.max_rows
            meta = [(-1, 0)] * self.max_rows
            for slot, tok, pos in rows:
                tokens[slot], positions[slot], meta[slot] = tok, pos, (slot, pos + 1)
            slots = [self.scratch_slot] * self.max_rows
            for slot, _, _ in rows:
                slots[slot] = slot
            pick = [slot for slot, _, _ in rows]
        else:
            slots = [slot for slot, _, _ in rows]
            tokens = [tok for _, tok, _ in rows]
            positions = [pos for _, _, pos in rows]
            meta = [(slot, pos + 1) for slot, _, pos in rows]
            pick = list(range(len(rows)))
        slot_t = torch.tensor(slots, device=self.device)
        pos_t = torch.tensor(positions, device=self.device)
        self.cache.plan_decode(slot_t, pos_t, max(positions))
        out = self.model(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None],
            position_ids=pos_t[:, None],
            past_key_values=self.cache,
            use_cache=True,
            aios_batch=RaggedBatch(meta),
        )
        logits = out.logits[:, -1]
        return logits[torch.tensor(pick, device=self.device)].float()
