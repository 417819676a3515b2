"""``Linear``: ``y = x @ w.T + b`` for the runner's weights, with the weight pre-packed where that pays.

Three backends, chosen once per weight:

1. **fp32 on a CPU with AVX2 and FMA: the C++ kernel** (``csrc/linear.cpp``, via ``cpp_kernels``). Every
   output is one sum over k in one fixed order, so a row's bits do not depend on the row count, from
   1 row: batch invariant by construction, no padding. Measured on a 2-core AVX2 EPYC (SmolLM2's
   matmuls, 2 threads): 1 row 6.0 ms against oneDNN's 18-23 ms (it streams the packed weight at
   memory speed); 8 rows 28 against 42-55 ms; 32 rows level; prefill (512 rows) 86-95 against
   oneDNN's 86-102 GFLOP/s (x packed into k-interleaved 6-row tiles, as BLIS does).
   A weight whose values are all bf16 numbers (``weights="bfloat16"``) is stored in bf16 panels,
   losslessly: half the bytes, the same float32 products and sums. A weight that is exactly what a
   Q4_1 GGUF dequantizes to (``q4_form``: every 32 consecutive inputs of an output are
   ``fl(fl(q * d) + m)``, q in 0..15; the embedded SmolLM2's decoder weights are) is stored as 4-bit
   codes with each block's d and m, 0.75 byte per weight, and rebuilt in the kernel with the same two
   roundings: the very float32 weights, so the same bits as float32 panels from a fifth of the bytes.
   Likewise a Q8_0 GGUF's values (``q8_form``: ``fl(q * d)``, q an int8; the embedded model's
   LM head) as 8-bit codes, 1.25 byte per weight. ``AIOS_NO_CODED_PANELS=1`` turns both off.
2. **oneDNN with a pre-packed weight**: fp32 where the C++ kernel is not built, and bf16 where oneDNN
   has native bf16 (below).
3. ``F.linear`` everywhere else (GPUs, a torch without oneDNN).

Why not ``F.linear``: on CPU in fp32 it calls MKL's sgemm, which (measured, torch 2.13, AVX2 and
AVX-512 CPUs) gives a row one result for 1 row, another for 2-3 rows and a stable one from 4 rows
on, and repacks the weight on every call. Decode steps are weight-bandwidth bound (SmolLM2-135M
reads ~530 MB of fp32 weights per step), so that repacking costs about half the step, and the
row-count dependence forces a lone request to compute 4 padded rows.

oneDNN with the weight reordered once into its blocked layout (``mkldnn._reorder_linear_weight``,
the layout ``torch.compile``'s CPU backend freezes weights into) streams the packed weight as it
is and, measured on the same machines, gives every row the same bits for every row count from 1
to thousands, 1 or 2 threads. Cold-cache decode step (all 30 layers and the LM head, 1 thread):
1 row 68 ms, 4 rows 86 ms, 8 rows 98 ms, against 84 / 156 / 154 ms for ``F.linear``; prefill
GEMMs 52-63 vs 44-51 GFLOP/s. ``batch_invariance`` still measures stability at start with the
same ``Linear``, so a device where this does not hold falls back to padding (or fixed rows).

bf16 on a CPU with native bf16 dot products (AVX512-BF16 or AMX) packs the same way: measured on an
AVX512-BF16 EPYC (no AMX), all of SmolLM2's matmuls for one row take 11.5 ms packed against 31.7 ms
with ``F.linear`` (1 thread), and a row gets the same bits as ``F.linear`` gives it. There oneDNN's
one-row kernel rounds some sums differently from its many-row one (in fp32 too), which
``batch_invariance`` finds, and the runner pads a lone row to 2.

Packing applies to fp32, and to bf16 where oneDNN has native bf16, on CPU with oneDNN present;
everything else (GPUs, a torch without oneDNN) uses ``F.linear`` on the plain weight. The packed copy is the runner's own: the model's
parameters stay as they are for any other caller (it costs one more copy of the weights).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from aios.kernel import cpp_kernels

PACK_HINT = 8  # rows the packed layout is tuned for (decode batch sizes); any row count works
Q4_BLOCK = 32  # inputs per (d, m) pair in a Q4_1 GGUF block


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per block (last dim): every float has the same bits (``==`` would let -0.0 pass for 0.0)."""
    return (a.view(torch.int32) == b.view(torch.int32)).all(-1)


def _exact_scales(d: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Per scale: ``q * d`` is exact in float32 for every code ``|q| <= 2**code_bits``: ``d`` is 0, or a
    normal float with at most ``24 - code_bits`` significant bits (a code below ``2**code_bits`` times
    such a significand fits 24 bits; ``2**code_bits`` itself only moves the exponent). Then the
    dequantizer's ``fl(fl(q * d) + m)`` is ``fl(q * d + m)``, which the kernel computes as one fused
    multiply-add. True of a GGUF's fp16 scales (11 bits). Checked on the scales alone, not on every
    product: the weights' own check is the start-up cost already."""
    low = (1 << code_bits) - 1
    normal = d.abs() >= torch.finfo(torch.float32).tiny
    return (d == 0) | (normal & (d.view(torch.int32) & low == 0))


@torch.inference_mode()
def q4_form(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(codes [N, K] uint8, d, m [N, K/32] float32)`` with ``w == fl(fl(codes * d) + m)`` for every
    weight, bit for bit (a Q4_1 GGUF's dequantized values), and ``codes * d`` exact, or ``None``.
    ``m`` is each block's minimum (code 0); ``d`` is tried as the span over the largest code (15 where
    the quantizer mapped the block's maximum there, as GGUF's does; 14-12 otherwise), rounded to fp16
    as GGUF stores it, then unrounded. Every weight is checked, so a wrong guess only means the matrix is stored otherwise."""
    if w.dtype != torch.float32 or w.dim() != 2 or w.shape[1] % Q4_BLOCK or not w.numel():
        return None
    N, K = w.shape
    b = w.reshape(N, K // Q4_BLOCK, Q4_BLOCK)
    m = b.amin(-1)
    span = b.amax(-1) - m
    if not torch.isfinite(span).all():
        return None
    d = torch.zeros_like(m)
    codes = torch.zeros(b.shape, dtype=torch.uint8)
    ok = _same_bits(b, m[..., None].expand_as(b))  # a constant block: code 0, d 0
    for top in (15, 14, 13, 12):
        for cand in ((span / top).half().float(), span / top):
            todo = ~ok
            if not todo.any():
                break
            bt, mt, ct = b[todo], m[todo, None], cand[todo, None]
            q = torch.round((bt - mt) / ct).clamp_(0, 15).nan_to_num_(0)
            good = _same_bits((q * ct) + mt, bt) & _exact_scales(ct[:, 0], 4)  # the dequantizer's two roundings
            sel = tuple(i[good] for i in todo.nonzero(as_tuple=True))
            d[sel], codes[sel] = ct[good, 0], q[good].to(torch.uint8)
            ok[sel] = True
        if top == 15 and (~ok).float().mean() > 0.5:  # not a Q4 matrix: do not try harder
            return None
    return (codes.reshape(N, K), d, m) if bool(ok.all()) else None


@torch.inference_mode()
def q8_form(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(codes [N, K] int8, d, m = 0)`` with ``w == fl(fl(codes * d) + 0)`` bit for bit and ``codes * d``
    exact (a Q8_0 GGUF's dequantized values: d = max |w| / 127 of each 32-block, stored in fp16), or
    ``None``."""
    if w.dtype != torch.float32 or w.dim() != 2 or w.shape[1] % Q4_BLOCK or not w.numel():
        return None
    N, K = w.shape
    b = w.reshape(N, K // Q4_BLOCK, Q4_BLOCK)
    amax = b.abs().amax(-1)
    if not torch.isfinite(amax).all():
        return None
    m = torch.zeros_like(amax)
    for cand in ((amax / 127).half().float(), amax / 127):
        c = cand[..., None]
        q = torch.where(c > 0, b / c, 0).round_().clamp_(-128, 127)
        if bool((_same_bits((q * c) + m[..., None], b) & _exact_scales(cand, 7)).all()):
            return q.to(torch.int8).reshape(N, K), cand, m
    return None


def can_pack(device: torch.device | str, dtype: torch.dtype) -> bool:
    return (
        torch.device(device).type == "cpu"
        and (dtype == torch.float32 or dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class Linear:
    """One weight matrix ``[out, in]`` (and optional bias), called on ``x [rows, in]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = True):
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.packed = self.panels = None
        self.form = str(weight.dtype).removeprefix("torch.")  # how the C++ panels store it: fp32, bf16, q4 or q8
        if pack and cpp_kernels.linear_usable(weight.device, weight.dtype):
            self._cpp = cpp_kernels.linear()
            with torch.inference_mode():  # fewer bytes wherever that loses nothing
                coded = None
                if not os.environ.get("AIOS_NO_CODED_PANELS"):
                    for form, find, pack in (("q4", q4_form, self._cpp.pack_q4), ("q8", q8_form, self._cpp.pack_q8)):
                        if (coded := find(self.weight)) is not None:
                            self.panels, self.form = pack(*coded), form
                            break
                if coded is None:  # bf16 panels where the values are bf16 numbers (``llm.round_to_bf16``)
                    exact = torch.equal(self.weight.to(torch.bfloat16).to(weight.dtype), self.weight)
                    self.panels = self._cpp.pack(self.weight, torch.bfloat16 if exact else weight.dtype)
                    self.form = "bf16" if exact else "fp32"
        elif pack and can_pack(weight.device, weight.dtype):
            with torch.inference_mode():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), PACK_HINT)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def backend(self) -> str:
        return "cpp" if self.panels is not None else "onednn" if self.packed is not None else "torch"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.panels is not None:
            f = self._cpp.linear_coded if self.form in ("q4", "q8") else self._cpp.linear
            return f(x, self.panels, self.weight.shape[0], self.bias)
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
