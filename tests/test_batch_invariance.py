"""``batch_invariance.stable_rows``: the row count it picks must really make every row's bits independent
of the batch. Checked on many rows, not one (a one-row probe missed oneDNN's bf16 one-row kernel
rounding 8% of rows differently), with SmolLM2's down-projection shape and random weights."""

from __future__ import annotations

import pytest
import torch

from aios.kernel.batch_invariance import stable_rows
from aios.kernel.linear import Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_from_the_chosen_count_are_batch_invariant(dtype):
    shape = (576, 1536)
    m = stable_rows([shape], dtype, torch.device("cpu"), 64).linear
    assert m is not None
    gen = torch.Generator().manual_seed(1)  # other data than the probe's
    lin = Linear(torch.randn(*shape, generator=gen).to(dtype))
    x = torch.randn(600, shape[1], generator=gen).to(dtype)
    full = lin(x)
    for size in sorted({m, m + 1, 2 * m + 3, 64, 257}):
        parts = torch.cat([lin(x[o : o + size]) for o in range(0, 600, size)])
        assert torch.equal(parts, full), size
