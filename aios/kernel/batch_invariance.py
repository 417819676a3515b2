"""How many rows a matmul needs before a row's result stops depending on the number of rows.

Exactness needs a token's numbers to be the same whether it is computed alone or in a batch of
any size. A GEMM's row result depends only on that row *if the library picks the same kernel and
reduction order for every row count*. Measured on this project's CPUs (torch 2.13): fp32
``F.linear`` (MKL) gives one result for 1 row, another for 2-3 rows, and a single stable result
for every row count from 4 up to thousands; oneDNN with a pre-packed weight (``linear.Linear``,
the runner's default on CPU) was stable from 1 row on the AVX2 and AMX machines, and from 2 rows
on an AVX512-BF16 EPYC (see ``ROWS``). Attention's batched matmuls (MKL) are stable from 4 rows.
Rather than hard-code any of that, ``stable_rows`` measures it once per (shapes, dtype, device,
packing, thread count) with random data (the kernel is chosen by shapes; values only decide
whether a difference in rounding shows, hence many rows): for the weight matmuls and for attention
separately, the smallest ``m`` such that every tested row count ``>= m`` gives the first ``ROWS``
rows the same bits. The runner pads a forward's rows to the first and each attention call's query rows to the
second, so a lone agent computes one row where the weights allow it.

``None`` means no such ``m`` up to the largest count tried (e.g. a GPU BLAS that splits K by
row count): the runner then falls back to fixed-size batches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from aios.kernel.attention import CHUNK
from aios.kernel.linear import Linear

CANDIDATES = (1, 2, 4, 8, 16)
PROBES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 257)
# Rows compared at each count. Not row 0 alone: oneDNN's bf16 kernel for one row and the one for
# several differ only where the fp32 sum sits exactly between two bf16 values (measured on an
# AVX512-BF16 EPYC: SmolLM2's down projection, 169 of 2,000 random rows got other bits alone than
# in a batch; the real model's residual stream hits it within a few layers). One random row
# misses that nine times in ten; 128 rows essentially never.
ROWS = 128


@dataclass(frozen=True)
class StableRows:
    linear: int | None  # rows a forward is padded to (the weight matmuls)
    attention: int | None  # query rows (per KV head) an attention call is padded to


def _first_stable(got: dict[int, bytes]) -> int:
    counts = sorted(got)
    ref = got[counts[-1]]
    first = counts[-1]
    for m in reversed(counts):
        if got[m] != ref:
            break
        first = m
    return first if first != counts[-1] else 10**9


def _rows(lin: Linear, x: torch.Tensor, m: int, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of ``lin(x)``, computed in calls of ``m`` rows each."""
    if m >= rows:
        return lin(x[:m])[:rows]
    return torch.cat([lin(x[o : o + m]) for o in range(0, rows, m)])[:rows]


def _candidate(stable_from: int) -> int | None:
    return next((c for c in CANDIDATES if c >= stable_from), None)


@functools.lru_cache(maxsize=32)
def _measure(shapes: tuple[tuple[int, int], ...], head_dim: int, dtype, device: str, pack: bool, threads: int) -> StableRows:
    gen = torch.Generator(device="cpu").manual_seed(0)
    linear_from = 1
    with torch.inference_mode():
        for n, k in shapes:
            lin = Linear(torch.randn(n, k, generator=gen).to(device=device, dtype=dtype), pack=pack)
            small = n * k <= 4_000_000  # an LM head: fewer counts and rows (each call reads ~100 MB)
            counts = PROBES if small else tuple(p for p in PROBES if p <= 33)
            rows = ROWS if small else max(1, ROWS // 4)
            x = torch.randn(max(counts) + rows, k, generator=gen).to(device=device, dtype=dtype)
            got = {m: _rows(lin, x, m, rows).float().cpu().numpy().tobytes() for m in counts}
            linear_from = max(linear_from, _first_stable(got))
        # attention's batched matmuls: [M, D] @ [D, CHUNK] (scores) and [M, CHUNK] @ [CHUNK, D] (values)
        attention_from = 1
        for inner, outer in ((head_dim, CHUNK), (CHUNK, head_dim)):
            a = torch.randn(3, max(PROBES), inner, generator=gen).to(device=device, dtype=dtype)
            b = torch.randn(3, inner, outer, generator=gen).to(device=device, dtype=dtype)
            got = {m: torch.matmul(a[:, :m], b)[0, 0].float().cpu().numpy().tobytes() for m in PROBES}
            attention_from = max(attention_from, _first_stable(got))
    return StableRows(_candidate(linear_from), _candidate(attention_from))


def stable_rows(shapes, dtype: torch.dtype, device: torch.device, head_dim: int, pack: bool = True) -> StableRows:
    """The row counts from which ``Linear`` with these weight ``shapes`` ``(out, in)`` and attention's
    matmuls (``head_dim`` wide) are row-invariant here (``None``: not up to 16)."""
    shapes = tuple(dict.fromkeys((int(n), int(k)) for n, k in shapes))
    return _measure(shapes, head_dim, dtype, str(device), pack, torch.get_num_threads())
