"""Runs the model: one forward for every token of a step (prompt chunks and decode rows together).

The runner calls the model's parts itself (embedding, decoder layers' norms, projections and MLPs,
final norm, LM head) instead of ``model(...)``: the KV cache is the engine's ``SlotKVCache``, not
a transformers ``Cache``. Attention is one call per layer for every row of the step, prompt and
decode alike: on CPU the C++ kernel of ``cpp_kernels`` (each row reads its own slot's keys in a
fixed order: no gather, no padding, batch invariant by construction; at 32 decode rows it made
the bf16 step ~1.7x faster than the eager path); elsewhere (GPUs, no compiler) the eager
``attention.ragged_attention``, one batched call for the decode rows plus one for the prompt
chunks. Nothing is passed to transformers as ``past_key_values``. Supported: Llama-style decoders (Llama, Mistral
without sliding window, Qwen2, Qwen3) — SmolLM2 is a Llama.

A step's tokens are one flat batch of ``T`` rows for every matmul. Exactness (a request's tokens
do not depend on who shares its steps, see ``attention`` and ``batch_invariance``): every row-wise
op gives a row the same bits for any row count ``>= min_rows``. For fp32 on CPU, everything is in C++
with one fixed order per row (``cpp_kernels``: the weight matmuls of ``linear.cpp``, attention, and the
row-wise glue of ``rowwise.cpp``, i.e. residual add + RMSNorm, rotary embedding, SiLU-gated product),
so ``min_rows`` is 1 by construction and a lone agent computes one row. Elsewhere the flat batch is
padded to ``min_rows`` as measured (oneDNN's packed bf16: 1 or 2 rows; 4 with plain ``F.linear``)
and, on the eager attention path, every attention call's query rows to ``attn_rows``. If this
device has no such row counts, ``fixed_rows`` mode runs decode steps at ``max_rows`` rows and each
prompt in a forward of its own, as before.

No host syncs inside ``run``: lengths come from the Python side; only the caller reads tokens back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aios.kernel import cpp_kernels
from aios.kernel.attention import CHUNK, attention_bias, blocked_attention, padded_len, query_blocks
from aios.kernel.batch_invariance import StableRows, stable_rows
from aios.kernel.kv_cache import SlotKVCache
from aios.kernel.linear import Linear

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

    def __init__(
        self, model, max_rows: int, batch_invariant: bool = True, max_len: int | None = None, cpp_attention: bool = True
    ):
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
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.max_len = max_len or getattr(cfg, "max_position_embeddings", 2048)
        self.layers, self.lm_head = _weights(model, self.heads, self.kv_heads, self.head_dim)
        self.eps = model.model.norm.variance_epsilon
        # The C++ kernel attends each row alone in a fixed order: no padding rows, no gathers. It reads
        # keys stored transposed in blocks of 16 positions (``SlotKVCache.key_block``).
        self.cpp = cpp_kernels.attention() if cpp_attention and cpp_kernels.attention_usable(self.device, self.dtype) else None
        self.cache = SlotKVCache(
            len(self.layers), max_rows, self.kv_heads, self.head_dim, self.dtype, self.device, self.max_len,
            key_block=16 if self.cpp is not None else 0,
        )
        self.free_slots: list[int] = list(range(max_rows))
        # The row-wise glue in C++ too where the whole layer is on the fixed-order path (fp32 CPU
        # matmuls in ``linear.cpp``, Llama's SiLU MLP, no Qwen3 q/k norms): one call per op, not eight.
        self.ops = (
            cpp_kernels.rowwise()
            if self.cpp is not None
            and all(lin.backend == "cpp" for lin in self.layers[0].linears())
            and getattr(cfg, "hidden_act", None) == "silu"
            and self.layers[0].q_norm is None
            else None
        )
        shapes = [lin.shape for lin in self.layers[0].linears()] + [self.lm_head.shape]
        if not batch_invariant:
            stable = None
        elif self.cpp is not None and all(lin.backend == "cpp" for lin in [*self.layers[0].linears(), self.lm_head]):
            stable = StableRows(1, 1)  # fixed-order C++ matmuls and attention: invariant by construction
        else:
            stable = stable_rows(shapes, self.dtype, self.device, self.head_dim)
            if self.cpp is not None:
                stable = StableRows(stable.linear, 1)
        self.fixed_rows = stable is not None and None in (stable.linear, stable.attention)
        self.min_rows = 1 if stable is None else max_rows if self.fixed_rows else stable.linear
        self.attn_rows = 1 if stable is None else max_rows if self.fixed_rows else stable.attention
        with torch.inference_mode():  # rotary tables for every position (the model's own rotary code)
            pos = torch.arange(padded_len(self.max_len), device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = model.model.rotary_emb(probe, pos)
            half = self.head_dim // 2
            # rope(x) = x * cos + roll(x, half) * sin_signed, with rotate_half's sign folded into sin
            self.cos = cos[0]
            self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

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
        n_real = len(ids)
        pad = max(0, pad_to - n_real)
        T = n_real + pad
        self.cache.ensure_capacity(padded_len(max(c.end for c in chunks)))
        ids_t = torch.tensor(ids + [0] * pad, dtype=torch.long, device=dev)
        pos_t = torch.tensor([p for c in chunks for p in range(c.start, c.end)] + [0] * pad, dtype=torch.long, device=dev)
        slot_t = torch.tensor([c.slot for c in chunks for _ in c.ids], dtype=torch.long, device=dev)
        groups = _groups(chunks, self, dev) if self.cpp is None else []
        pos_real = pos_t[:n_real]
        # torch path: the rotary tables' rows for this step's positions, gathered once for all layers
        cos_sin = None if self.ops is not None else (self.cos[pos_t].unsqueeze(1), self.sin[pos_t].unsqueeze(1))
        H, D = self.heads, self.head_dim
        x = self.model.model.embed_tokens(ids_t)
        delta = None  # what the previous sublayer adds to the residual stream x
        for li, layer in enumerate(self.layers):
            x, h = self._add_norm(x, delta, layer.w_in, layer.eps_in)
            q, k, v = self._rope(layer.qkv(h), layer, pos_t, cos_sin)
            o = self._attention(li, q, k, v, slot_t, pos_real, groups, layer.scaling)
            x, h = self._add_norm(x, layer.o(o.reshape(T, H * D)), layer.w_post, layer.eps_post)
            delta = layer.down(self._gated(layer, layer.gate_up(h)))
        if self.ops is not None:
            h = self.ops.add_rms_norm(x, delta, self.model.model.norm.weight, self.model.model.norm.variance_epsilon)
        else:
            h = self.model.model.norm(x + delta)
        last = [n - 1 for n in itertools.accumulate(len(c.ids) for c in chunks)]
        if last != list(range(len(chunks))) or len(chunks) < pad_to:
            h = h[torch.tensor(last + [0] * max(0, pad_to - len(last)), dtype=torch.long, device=dev)]
        logits = self.lm_head(h)
        return logits[: len(chunks)].float()

    # -- the row-wise glue: one C++ call each where ``self.ops``, else torch ----------------------------
    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, w: torch.Tensor, eps: float):
        """The residual stream ``x + delta`` and its RMSNorm (``x`` is updated in place on the C++ path)."""
        if self.ops is not None:
            return x, self.ops.add_rms_norm(x, delta, w, eps)
        x = x if delta is None else x + delta
        return x, F.rms_norm(x, (x.shape[-1],), w, eps)

    def _rope(self, qkv: torch.Tensor, layer: FusedLayer, pos_t: torch.Tensor, cos_sin):
        """``q [T, H, D], k, v [T, KVH, D]`` of fused qkv rows, rotary embedding applied to q and k
        (Qwen3's q/k norms first). ``cos_sin``: the torch path's tables at ``pos_t``, ``[T, 1, D]`` each."""
        H, KVH, D, T = self.heads, self.kv_heads, self.head_dim, qkv.shape[0]
        v = qkv[:, (H + KVH) * D :].view(T, KVH, D)
        if self.ops is not None:
            self.ops.rope_(qkv, H + KVH, D, self.cos, self.sin, pos_t)
            return qkv[:, : H * D].view(T, H, D), qkv[:, H * D : (H + KVH) * D].view(T, KVH, D), v
        qk = qkv[:, : (H + KVH) * D].view(T, H + KVH, D)
        if layer.q_norm is not None:  # Qwen3
            qk = torch.cat([layer.q_norm(qk[:, :H]), layer.k_norm(qk[:, H:])], dim=1)
        cos, sin = cos_sin
        qk = torch.addcmul(qk * cos, torch.roll(qk, D // 2, dims=-1), sin)
        return qk[:, :H], qk[:, H:], v

    def _gated(self, layer: FusedLayer, gate_up: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return layer.act(gate) * up

    def _attention(self, li: int, q, k, v, slot_t, pos, groups: list[_Group], scaling: float) -> torch.Tensor:
        """Write the real rows' ``k, v`` into the cache, then every query row's attention ``[T, H, D]``."""
        n, T = len(pos), q.shape[0]
        if self.cpp is not None:  # the C++ kernel writes k, v itself
            kc, vc = self.cache.keys[li], self.cache.values[li]
            o = self.cpp.ragged_attention(q[:n], k[:n], v[:n], kc, vc, slot_t, pos, scaling)
            return torch.cat([o, o.new_zeros(T - n, *o.shape[1:])]) if T > n else o
        self.cache.put(li, slot_t, pos, k[:n], v[:n])
        if len(groups) == 1 and groups[0].identity and len(groups[0].q_rows) == T:
            return self._attend(li, groups[0], q, scaling)
        o = q.new_zeros(T, self.heads, self.head_dim)
        for g in groups:
            o[g.out_rows] = self._attend(li, g, q, scaling)
        return o

    def _attend(self, layer: int, g: _Group, q: torch.Tensor, scaling: float) -> torch.Tensor:
        R, Q = len(g.slots), g.q_len
        KVH, D = self.kv_heads, self.head_dim
        grp = self.heads // KVH
        qs = q[: R * Q] if g.identity else q[g.q_rows]
        qs = qs.reshape(R, Q, KVH, grp, D)
        qs = (qs.transpose(1, 2) if Q > 1 else qs.view(R, KVH, grp, D)).reshape(R, KVH, Q * grp, D)
        m = Q * grp
        if m < g.m:  # pad the query rows so the attention matmuls are row-invariant too
            qs = torch.cat([qs, qs.new_zeros(R, KVH, g.m - m, D)], dim=2)
        k, v = self.cache.gather(layer, g.slot_t, g.key_len)
        o = blocked_attention(qs * scaling, k, v, g.bias, g.blocks)[:, :, :m]
        o = o.reshape(R, KVH, Q, grp, D)
        o = (o.transpose(1, 2) if Q > 1 else o).reshape(R * Q, self.heads, D)
        return o if g.identity else o[g.keep]


class FusedLayer:
    """One decoder layer's weights, with q/k/v and gate/up fused into one matmul each.

    The fused matrices are built once; the model's own ``q_proj``/``k_proj``/... weights become
    views into them, so the model is unchanged for any other caller and no weight is stored twice
    in its plain layout (``Linear`` may keep a packed copy, see ``linear``).
    """

    def __init__(self, layer, heads: int, kv_heads: int, head_dim: int):
        attn, mlp = layer.self_attn, layer.mlp
        b_qkv = None if attn.q_proj.bias is None else torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        self.qkv = Linear(_fuse([attn.q_proj, attn.k_proj, attn.v_proj]), b_qkv)
        self.gate_up = Linear(_fuse([mlp.gate_proj, mlp.up_proj]))
        self.o = Linear(attn.o_proj.weight, attn.o_proj.bias)
        self.down = Linear(mlp.down_proj.weight)
        self.act = mlp.act_fn
        self.w_in, self.eps_in = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.w_post, self.eps_post = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        self.scaling = attn.scaling

    def linears(self) -> list[Linear]:
        return [self.qkv, self.o, self.gate_up, self.down]


class _Shared:
    """The runner's weights for one model, kept on the model so that every engine built over it
    shares one packed copy (a benchmark builds many kernels over one model). A deepcopy of the model
    does not copy it (the copy's parameters are new tensors; its first runner packs them anew).
    Packed copies do not follow in-place edits of the parameters: load new weights into a new model."""

    def __init__(self, layers: list[FusedLayer], lm_head: Linear):
        self.layers, self.lm_head = layers, lm_head

    def __deepcopy__(self, memo):
        return None

    def matches(self, model) -> bool:
        pairs = [(self.lm_head, model.lm_head.weight)]
        for fl, layer in zip(self.layers, model.model.layers, strict=True):
            a, m = layer.self_attn, layer.mlp
            pairs += [(fl.qkv, a.q_proj.weight), (fl.o, a.o_proj.weight), (fl.gate_up, m.gate_proj.weight), (fl.down, m.down_proj.weight)]
        return all(lin.weight.data_ptr() == w.data_ptr() and lin.weight.dtype == w.dtype for lin, w in pairs)


def _weights(model, heads: int, kv_heads: int, head_dim: int) -> tuple[list[FusedLayer], Linear]:
    shared = getattr(model, "_aios_runner_weights", None)
    if not isinstance(shared, _Shared) or not shared.matches(model):
        layers = [FusedLayer(layer, heads, kv_heads, head_dim) for layer in model.model.layers]
        shared = _Shared(layers, Linear(model.lm_head.weight, model.lm_head.bias))
        model._aios_runner_weights = shared
    return shared.layers, shared.lm_head


@torch.no_grad()
def _fuse(linears) -> torch.Tensor:
    fused = torch.cat([lin.weight.detach() for lin in linears])
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused[row : row + n], requires_grad=lin.weight.requires_grad)
        row += n
    return fused


@dataclass
class _Group:
    """One attention call: ``R`` sequences with up to ``q_len`` queries each (padded)."""

    slots: list[int]
    slot_t: torch.Tensor
    q_len: int
    m: int  # query rows per KV head in the call (padded to attn_rows)
    key_len: int
    identity: bool  # the group's queries are exactly the forward's first R * q_len rows, in order
    q_rows: torch.Tensor  # [R * q_len] flat-batch row of each (padded) query
    bias: torch.Tensor  # [R, 1, nc, m, CHUNK]: 0 where the query sees the key, -inf elsewhere
    blocks: list[tuple[int, int, int]]  # query row blocks and the key chunks each needs (causal skip)
    keep: torch.Tensor  # indices of the real queries among the R * q_len
    out_rows: torch.Tensor  # flat-batch rows of the real queries


def _groups(chunks: list[Chunk], runner: ModelRunner, dev) -> list[_Group]:
    """Decode rows in one attention call, prompt chunks in another (their query counts differ)."""
    starts = [0, *itertools.accumulate(len(c.ids) for c in chunks)][:-1]
    out = []
    for members in (
        [i for i, c in enumerate(chunks) if len(c.ids) == 1],
        [i for i, c in enumerate(chunks) if len(c.ids) > 1],
    ):
        if members:
            out.append(_group([chunks[i] for i in members], [starts[i] for i in members], runner, dev))
    return out


def _group(chunks: list[Chunk], starts: list[int], runner: ModelRunner, dev) -> _Group:
    q_len = max(len(c.ids) for c in chunks)
    grp = runner.heads // runner.kv_heads
    m = max(q_len * grp, runner.attn_rows)
    q_rows, keep, qpos = [], [], []
    for c, s in zip(chunks, starts, strict=True):
        n = len(c.ids)
        q_rows += [s + j for j in range(n)] + [s] * (q_len - n)
        keep += [len(keep) + j for j in range(n)] + [-1] * (q_len - n)
        qpos.append([p for p in range(c.start, c.end) for _ in range(grp)] + [0] * (m - n * grp))
    keep_idx = [i for i, k in enumerate(keep) if k >= 0]
    key_len = padded_len(max(c.end for c in chunks))
    return _Group(
        slots=[c.slot for c in chunks],
        slot_t=torch.tensor([c.slot for c in chunks], dtype=torch.long, device=dev),
        q_len=q_len,
        m=m,
        key_len=key_len,
        identity=q_rows == list(range(len(q_rows))),
        q_rows=torch.tensor(q_rows, dtype=torch.long, device=dev),
        bias=attention_bias(torch.tensor(qpos, dtype=torch.long, device=dev), key_len, runner.dtype),
        blocks=query_blocks(qpos, runner.attn_rows, CHUNK * grp) if q_len > 1 else [(0, m, key_len // CHUNK)],
        keep=torch.tensor(keep_idx, dtype=torch.long, device=dev),
        out_rows=torch.tensor([q_rows[i] for i in keep_idx], dtype=torch.long, device=dev),
    )
