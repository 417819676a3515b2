"""``Linear``: ``y = x @ w.T + b`` for the runner's weights, with the weight pre-packed where that pays.

Three backends, chosen once per weight:

1. **fp32 on a CPU with AVX2 and FMA: the C++ kernel** (``csrc/linear.cpp``, via ``cpp_kernels``). Every
   output is one sum over k in one fixed order, so a row's bits do not depend on the row count, from
   1 row: batch invariant by construction, no padding. Measured on a 2-core AVX2 EPYC (SmolLM2's
   matmuls, 2 threads): 1 row 6.0 ms against oneDNN's 18-23 ms (it streams the packed weight at
   memory speed); 8 rows 28 against 42-55 ms; 32 rows level; prefill (512 rows) 86-95 against
   oneDNN's 86-102 GFLOP/s (x packed into k-interleaved 6-row tiles, as BLIS does).
   A weight whose values are all bf16 numbers (``weights="bfloat16"``) is stored in bf16 panels,
   losslessly: half the bytes, the same float32 products and sums.
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

import torch
import torch.nn.functional as F

from aios.kernel import cpp_kernels

PACK_HINT = 8  # rows the packed layout is tuned for (decode batch sizes); any row count works


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
        if pack and cpp_kernels.linear_usable(weight.device, weight.dtype):
            self._cpp = cpp_kernels.linear()
            with torch.inference_mode():  # bf16 panels where that loses nothing (``llm.round_to_bf16``)
                exact = torch.equal(self.weight.to(torch.bfloat16).to(weight.dtype), self.weight)
                self.panels = self._cpp.pack(self.weight, torch.bfloat16 if exact else weight.dtype)
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
            return self._cpp.linear(x, self.panels, self.weight.shape[0], self.bias)
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
