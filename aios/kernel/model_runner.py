"""Runs the model: one forward for every token of a step (prompt chunks and decode rows together).

The runner calls the model's parts itself (embedding, decoder layers' norms, projections and MLPs,
final norm, LM head) instead of ``model(...)``: the KV cache is the engine's ``SlotKVCache``, not
a transformers ``Cache``, and attention is ``attention.ragged_attention``, one batched call per
layer for all decode rows (plus one for the prompt chunks, when there are some). Nothing is
passed to transformers as ``past_key_values``. Supported: Llama-style decoders (Llama, Mistral
without sliding window, Qwen2, Qwen3) — SmolLM2 is a Llama.

A step's tokens are one flat batch of ``T`` rows for every matmul. Exactness (a request's tokens
do not depend on who shares its steps, see ``attention`` and ``batch_invariance``): every row-wise
op gives a row the same bits for any row count ``>= min_rows``, so the flat batch and every
attention call's query rows are padded to ``min_rows`` (4 on this CPU in fp32), not to
``max_batch_size``. If this device has no such row count, ``fixed_rows`` mode runs decode steps at
``max_rows`` rows and each prompt in a forward of its own, as before.

No host syncs inside ``run``: lengths come from the Python side; only the caller reads tokens back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from aios.kernel.attention import padded_len, ragged_attention
from aios.kernel.batch_invariance import min_stable_rows
from aios.kernel.kv_cache import SlotKVCache

SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class Chunk:
    """Tokens ``ids`` of the sequence in ``slot`` at positions ``start..``; the forward returns the
    logits of the last one. A decode row is a chunk of one token."""

    slot: int
    ids: list[int]
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.ids)


class ModelRunner:
    """Owns the model's forward passes and the batch KV cache (one per engine)."""

    def __init__(self, model, max_rows: int, batch_invariant: bool = True, max_len: int | None = None):
        cfg = model.config
        if cfg.model_type not in SUPPORTED or getattr(cfg, "sliding_window", None) and cfg.model_type == "mistral":
            raise NotImplementedError(
                f"the local engine runs Llama-style decoders ({', '.join(sorted(SUPPORTED))}); got {cfg.model_type!r}"
            )
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_rows = max_rows
        self.vocab_size = cfg.vocab_size
        self.layers = list(model.model.layers)
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.max_len = max_len or getattr(cfg, "max_position_embeddings", 2048)
        self.cache = SlotKVCache(
            len(self.layers), max_rows, self.kv_heads, self.head_dim, self.dtype, self.device, self.max_len
        )
        self.free_slots: list[int] = list(range(max_rows))
        stable = min_stable_rows(model, self.dtype, self.device, self.head_dim) if batch_invariant else 1
        self.fixed_rows = stable is None
        self.min_rows = max_rows if stable is None else stable
        with torch.inference_mode():  # rotary tables for every position (the model's own rotary code)
            pos = torch.arange(padded_len(self.max_len), device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = model.model.rotary_emb(probe, pos)
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]

    # -- slots -------------------------------------------------------------------------------------
    def alloc(self, n: int) -> list[int]:
        if n > len(self.free_slots):
            raise RuntimeError(f"need {n} batch slots, {len(self.free_slots)} free")
        self.free_slots.sort()
        got, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return got

    def release(self, slots: list[int]) -> None:
        self.free_slots.extend(s for s in slots if s not in self.free_slots)

    # -- the forward -------------------------------------------------------------------------------
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """One forward over all ``chunks``; float32 logits of each chunk's last token ``[len(chunks), vocab]``."""
        if self.fixed_rows:
            return self._run_fixed(chunks)
        return self._forward(chunks, pad_to=self.min_rows)

    def _run_fixed(self, chunks: list[Chunk]) -> torch.Tensor:
        """Fallback for devices without row-invariant matmuls: decode rows padded to ``max_rows``, each
        prompt chunk alone (its own shapes are then the same whatever else is running)."""
        decode = [i for i, c in enumerate(chunks) if len(c.ids) == 1]
        out: list[torch.Tensor | None] = [None] * len(chunks)
        if decode:
            logits = self._forward([chunks[i] for i in decode], pad_to=self.max_rows)
            for j, i in enumerate(decode):
                out[i] = logits[j]
        for i, c in enumerate(chunks):
            if out[i] is None:
                out[i] = self._forward([c], pad_to=1)[0]
        return torch.stack(out)

    @torch.inference_mode()
    def _forward(self, chunks: list[Chunk], pad_to: int) -> torch.Tensor:
        dev = self.device
        ids = [t for c in chunks for t in c.ids]
        positions = [p for c in chunks for p in range(c.start, c.end)]
        slots = [c.slot for c in chunks for _ in c.ids]
        n_real = len(ids)
        pad = max(0, pad_to - n_real)
        self.cache.ensure_capacity(padded_len(max(c.end for c in chunks)))
        ids_t = torch.tensor(ids + [0] * pad, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions + [0] * pad, dtype=torch.long, device=dev)
        slot_t = torch.tensor(slots, dtype=torch.long, device=dev)
        groups = self._attention_groups(chunks, dev)
        cos, sin = self.cos[pos_t].unsqueeze(1), self.sin[pos_t].unsqueeze(1)  # [T, 1, D]
        T = n_real + pad
        x = self.model.model.embed_tokens(ids_t)
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(T, self.heads, self.head_dim)
            k = attn.k_proj(h).view(T, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(T, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.cache.put(li, slot_t, pos_t[:n_real], k[:n_real], v[:n_real])
            o = torch.zeros(T, self.heads, self.head_dim, dtype=q.dtype, device=dev)
            for g in groups:
                o[g.out_rows] = self._attend(li, g, q, attn.scaling)
            x = x + attn.o_proj(o.view(T, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = list(itertools.accumulate(len(c.ids) for c in chunks))
        last = [n - 1 for n in last]
        rows = torch.tensor(last + [0] * max(0, pad_to - len(last)), dtype=torch.long, device=dev)
        logits = self.model.lm_head(self.model.model.norm(x[rows]))
        return logits[: len(chunks)].float()

    def _attention_groups(self, chunks: list[Chunk], dev) -> list[_Group]:
        """Decode rows in one attention call, prompt chunks in another (their query counts differ)."""
        starts, off = [], 0
        for c in chunks:
            starts.append(off)
            off += len(c.ids)
        out = []
        for members in ([i for i, c in enumerate(chunks) if len(c.ids) == 1], [i for i, c in enumerate(chunks) if len(c.ids) > 1]):
            if members:
                out.append(_Group.build([chunks[i] for i in members], [starts[i] for i in members], self, dev))
        return out

    def _attend(self, layer: int, g: _Group, q: torch.Tensor, scaling: float) -> torch.Tensor:
        R, Q = len(g.slots), g.q_len
        grp = self.heads // self.kv_heads
        qs = q[g.q_rows].view(R, Q, self.kv_heads, grp, self.head_dim)
        qs = qs.permute(0, 2, 1, 3, 4).reshape(R, self.kv_heads, Q * grp, self.head_dim)
        m = Q * grp
        if m < self.min_rows:  # pad the query rows so the attention matmuls are row-invariant too
            qs = torch.cat([qs, qs.new_zeros(R, self.kv_heads, self.min_rows - m, self.head_dim)], dim=2)
        k, v = self.cache.gather(layer, g.slot_t, g.key_len)
        o = ragged_attention(qs, k, v, g.qpos, scaling)[:, :, :m]
        o = o.reshape(R, self.kv_heads, Q, grp, self.head_dim).permute(0, 2, 1, 3, 4).reshape(R * Q, self.heads, self.head_dim)
        return o[g.keep]


@dataclass
class _Group:
    """One attention call: ``R`` sequences with up to ``q_len`` queries each (padded)."""

    slots: list[int]
    slot_t: torch.Tensor
    q_len: int
    key_len: int
    q_rows: torch.Tensor  # [R * q_len] flat-batch row of each (padded) query
    qpos: torch.Tensor  # [R, M]: position of each query row (padding: 0)
    keep: torch.Tensor  # indices of the real queries among the R * q_len
    out_rows: torch.Tensor  # flat-batch rows of the real queries

    @staticmethod
    def build(chunks: list[Chunk], starts: list[int], runner: ModelRunner, dev) -> _Group:
        q_len = max(len(c.ids) for c in chunks)
        grp = runner.heads // runner.kv_heads
        m = max(q_len * grp, runner.min_rows)
        q_rows, keep, qpos = [], [], []
        for c, s in zip(chunks, starts, strict=True):
            n = len(c.ids)
            q_rows += [s + j for j in range(n)] + [s] * (q_len - n)
            keep += [True] * n + [False] * (q_len - n)
            rowpos = [p for p in range(c.start, c.end) for _ in range(grp)] + [0] * ((q_len - n) * grp)
            qpos.append(rowpos + [0] * (m - q_len * grp))
        keep_idx = [i for i, k in enumerate(keep) if k]
        return _Group(
            slots=[c.slot for c in chunks],
            slot_t=torch.tensor([c.slot for c in chunks], dtype=torch.long, device=dev),
            q_len=q_len,
            key_len=padded_len(max(c.end for c in chunks)),
            q_rows=torch.tensor(q_rows, dtype=torch.long, device=dev),
            qpos=torch.tensor(qpos, dtype=torch.long, device=dev),
            keep=torch.tensor(keep_idx, dtype=torch.long, device=dev),
            out_rows=torch.tensor([q_rows[i] for i in keep_idx], dtype=torch.long, device=dev),
        )


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
