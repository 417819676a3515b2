"""How many rows a matmul needs before a row's result stops depending on the number of rows.

Exactness needs a token's numbers to be the same whether it is computed alone or in a batch of
any size. A GEMM's row result depends only on that row *if the library picks the same kernel and
reduction order for every row count*. Measured on this project's CPUs (torch 2.13, MKL/oneDNN):
fp32 ``F.linear`` gives one result for 1 row, another for 2–3 rows, and a single stable result
for every row count from 4 up to thousands (prefill sizes included); bf16 was stable from 1 row.
Rather than hard-code that, ``min_stable_rows`` measures it once per (shapes, dtype, device,
thread count) with random data (kernel choice depends on shapes, not values): the smallest
``m`` such that every tested row count ``>= m`` gives row 0 the same bits. The runner pads every
forward (and every attention call's query rows) to at least that many rows, so a lone agent
computes ``m`` rows, not ``max_batch_size``.

``None`` means no such ``m`` up to the largest count tried (e.g. a GPU BLAS that splits K by
row count): the runner then falls back to fixed-size batches.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from aios.kernel.attention import CHUNK

CANDIDATES = (1, 2, 4, 8, 16)
PROBES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 257)


def _rows(fn, x: torch.Tensor, counts) -> dict[int, bytes]:
    return {m: fn(x[:m])[0].float().cpu().numpy().tobytes() for m in counts}


@functools.lru_cache(maxsize=32)
def _measure(shapes: tuple[tuple[int, int], ...], head_dim: int, dtype, device: str, threads: int) -> int | None:
    gen = torch.Generator(device="cpu").manual_seed(0)
    stable_from = 1
    for n, k in shapes:
        w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
        counts = PROBES if n * k <= 4_000_000 else tuple(p for p in PROBES if p <= 33)
        x = torch.randn(max(counts), k, generator=gen).to(device=device, dtype=dtype)
        got = _rows(lambda a, w=w: F.linear(a, w), x, counts)
        stable_from = max(stable_from, _first_stable(got))
    # attention's batched matmuls: [M, D] @ [D, CHUNK] (scores) and [M, CHUNK] @ [CHUNK, D] (values)
    for inner, outer in ((head_dim, CHUNK), (CHUNK, head_dim)):
        a = torch.randn(3, max(PROBES), inner, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(3, inner, outer, generator=gen).to(device=device, dtype=dtype)
        got = {m: torch.matmul(a[:, :m], b)[0, 0].float().cpu().numpy().tobytes() for m in PROBES}
        stable_from = max(stable_from, _first_stable(got))
    return next((c for c in CANDIDATES if c >= stable_from), None)


def _first_stable(got: dict[int, bytes]) -> int:
    counts = sorted(got)
    ref = got[counts[-1]]
    first = counts[-1]
    for m in reversed(counts):
        if got[m] != ref:
            break
        first = m
    return first if first != counts[-1] else 10**9


def min_stable_rows(shapes, dtype: torch.dtype, device: torch.device, head_dim: int) -> int | None:
    """The row count from which matmuls with these weight ``shapes`` ``(out, in)`` (and attention's,
    ``head_dim`` wide) are row-invariant here (``None``: not up to 16)."""
    shapes = tuple(dict.fromkeys((int(n), int(k)) for n, k in shapes))
    return _measure(shapes, head_dim, dtype, str(device), torch.get_num_threads())
