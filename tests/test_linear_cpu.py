"""The C++ matmul (``csrc/linear.cpp``) and row-wise ops (``csrc/rowwise.cpp``) of the CPU forward.

Each is checked against an oracle outside it (a float64 matmul, torch's own RMSNorm, SiLU and
rotary formula) and for the property the engine's exactness rests on: a row gets the same bits
whatever rows share the call, how many there are, and where it sits among them, from 1 row on.
``scripts/install-system.sh`` installs g++ and ninja, so the kernels must build where the suite runs
(the matmul needs AVX2 and FMA, which every x86-64 machine this project runs on has).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aios.cpuinfo import cpu_flags
from aios.kernel import cpp_kernels
from aios.kernel.linear import Linear, q4_form, q8_form

pytestmark = pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="the C++ matmul needs AVX2 and FMA")


@pytest.fixture(scope="module")
def lin():
    k = cpp_kernels.linear()
    assert k is not None, "the C++ linear kernel did not build (g++ and ninja come from install-system.sh)"
    return k


@pytest.fixture(scope="module")
def ops():
    k = cpp_kernels.rowwise()
    assert k is not None, "the C++ row-wise kernels did not build"
    return k


SHAPES = [(960, 576), (576, 1536), (37, 100), (16, 3), (1000, 257)]


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64(lin, shape, wdtype):
    n, k = shape
    g = torch.Generator().manual_seed(n + k)
    w, b, x = torch.randn(n, k, generator=g), torch.randn(n, generator=g), torch.randn(23, k, generator=g)
    got = lin.linear(x, lin.pack(w, wdtype), n, b)
    ref = x.double() @ w.to(wdtype).double().T + b.double()  # bf16 panels: the bf16-rounded weight, exactly
    assert got.shape == (23, n) and got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-4 * k**0.5)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_row_bits_do_not_depend_on_the_rows_beside_it(lin, wdtype):
    """Every row count from 1 (the decode of one agent) to past a 96-row block, every offset."""
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(576, 1536, generator=g), torch.randn(260, 1536, generator=g)
    packed = lin.pack(w, wdtype)
    full = lin.linear(x, packed, 576, None)
    for m in (1, 2, 3, 5, 6, 7, 12, 13, 95, 96, 97, 200):
        for start in (0, 1, 50, 260 - m):
            assert torch.equal(lin.linear(x[start : start + m], packed, 576, None), full[start : start + m]), (m, start)
    perm = torch.randperm(260, generator=g)  # and in any order
    assert torch.equal(lin.linear(x[perm], packed, 576, None), full[perm])


def test_threads_do_not_change_bits(lin):
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(3072, 576, generator=g), torch.randn(9, 576, generator=g)
    packed = lin.pack(w, torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lin.linear(x, packed, 3072, None)
        torch.set_num_threads(2)
        two = lin.linear(x, packed, 3072, None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_bad_input_is_refused(lin):
    packed = lin.pack(torch.randn(32, 64), torch.float32)
    with pytest.raises(RuntimeError, match="does not match"):
        lin.linear(torch.randn(2, 63), packed, 32, None)
    with pytest.raises(RuntimeError, match="float32"):
        lin.linear(torch.randn(2, 64, dtype=torch.float64), packed, 32, None)
    with pytest.raises(RuntimeError, match="N does not match"):
        lin.linear(torch.randn(2, 64), packed, 7, None)
    assert lin.linear(torch.randn(0, 64), packed, 32, None).shape == (0, 32)


def test_linear_uses_the_kernel_for_fp32_on_cpu(lin):
    w, b = torch.randn(40, 24), torch.randn(40)
    layer = Linear(w, b)
    assert layer.backend == "cpp"
    x = torch.randn(3, 24)
    assert torch.allclose(layer(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert Linear(w, pack=False).backend == "torch"


def _q4_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """What a Q4_1 GGUF dequantizes to: per 32 inputs of an output, fp16 d and m, 4-bit codes, and
    w = fl(fl(q * d) + m) in float32 (every block's codes reach 0 and 15, as the quantizer maps them)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.02 + 1e-4).half().float()
    m = (-torch.rand(n, k // 32, 1, generator=g) * 0.2).half().float()
    return ((q * d) + m).reshape(n, k)


def test_q4_panels_give_the_float32_panels_bits(lin, monkeypatch):
    """4-bit codes rebuild the very float32 weights, so the kernel's output equals the float32 panels'
    bit for bit at every row count (1-2 rows rebuild in registers, more in L1), with bias and ragged N."""
    w, b = _q4_weight(104, 576, 0), torch.randn(104)  # 7 panels: a group of 4 and a ragged group of 3
    codes, d, m = q4_form(w)
    assert torch.equal((codes.reshape(104, 18, 32).float() * d[..., None]) + m[..., None], w.reshape(104, 18, 32))
    layer = Linear(w, b)
    assert layer.backend == "cpp" and layer.form == "q4"
    assert layer.panels.numel() == 7 * 18 * 384  # 0.75 byte per weight (16-column panels, 104 -> 112)
    monkeypatch.setenv("AIOS_NO_CODED_PANELS", "1")
    plain = Linear(w, b)
    assert plain.form == "fp32"
    x = torch.randn(300, 576)
    full = layer(x)
    assert torch.equal(full, plain(x))
    for rows in (1, 2, 3, 7, 97):
        assert torch.equal(layer(x[:rows]), full[:rows]), rows
        assert torch.equal(layer(x[-rows:]), full[-rows:]), rows


def test_q8_panels_give_the_float32_panels_bits(lin, monkeypatch):
    """A Q8_0 GGUF's values (fl(q * d), q an int8, fp16 d = max |w| / 127 per 32 inputs), as the embedded
    model's LM head holds them: 8-bit codes, the float32 panels' bits at every row count."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (50, 576 // 32, 32), generator=g).float()
    q[..., 0] = 127
    d = (torch.rand(50, 576 // 32, 1, generator=g) * 0.01 + 1e-4).half().float()
    w = (q * d).reshape(50, 576)
    assert q4_form(w) is None
    layer = Linear(w)
    assert layer.form == "q8" and layer.panels.numel() == 4 * 18 * 640
    monkeypatch.setenv("AIOS_NO_CODED_PANELS", "1")
    plain = Linear(w)
    x = torch.randn(130, 576)
    full = layer(x)
    assert torch.equal(full, plain(x))
    for rows in (1, 2, 5, 97):
        assert torch.equal(layer(x[:rows]), full[:rows]), rows
    off = w.clone()
    off[7, 100] = torch.nextafter(off[7, 100], torch.tensor(-1.0))
    assert q8_form(off) is None


def test_q4_form_refuses_what_it_cannot_rebuild_exactly():
    w = _q4_weight(16, 64, 1)
    assert q4_form(w) is not None
    off = w.clone()
    off[3, 40] = torch.nextafter(off[3, 40], torch.tensor(1.0))  # one weight one ulp away
    assert q4_form(off) is None
    assert Linear(off).form == "fp32"
    assert q4_form(torch.randn(16, 64)) is None  # an ordinary float32 matrix
    assert q4_form(torch.randn(16, 48)) is None  # K not a multiple of 32
    nan = w.clone()
    nan[0, 0] = float("nan")
    assert q4_form(nan) is None


def test_coded_forms_refuse_scales_whose_products_round(lin, monkeypatch):
    """The kernel rebuilds a weight as one fused q * d + m, equal to the dequantizer's fl(fl(q * d) + m)
    only when q * d is exact. With full-precision float32 scales most products round: such a matrix
    holds Q4_1 / Q8_0 values bit for bit, yet must keep float32 panels (and their output)."""
    g = torch.Generator().manual_seed(5)
    d = torch.rand(4096, generator=g) * 0.02 + 1e-3  # 24 significant bits: q * d needs up to 28 (31 for q8)
    for top, q_of in ((15, lambda n: torch.randint(0, 16, (n, 32), generator=g)),
                      (127, lambda n: torch.randint(-127, 128, (n, 32), generator=g))):  # fmt: skip
        q = q_of(len(d)).float()
        q[:, 0], q[:, 1] = top, 0  # the code that maps the block's extreme, and the minimum 0 (m = 0)
        # keep scales the form finds again from the block (d == extreme / top), whose products round
        found = (q[:, :1] * d[:, None]).squeeze(1) / top == d
        rounds = ~((q * d[:, None]).double() == q.double() * d[:, None].double()).all(-1)
        keep = (found & rounds).nonzero().squeeze(1)[:64]
        assert len(keep) == 64  # the premise: such scales exist, the form's first guesses reproduce them
        w = (q[keep] * d[keep, None]).reshape(32, 64)  # w == fl(fl(q * d) + 0) bit for bit
        form = q4_form if top == 15 else q8_form
        assert form(w) is None
        monkeypatch.setattr("aios.kernel.linear._exact_scales", lambda d, bits: torch.ones_like(d, dtype=torch.bool))
        assert form(w) is not None  # without the product check it would be taken: the check is what refuses it
        monkeypatch.undo()
        layer = Linear(w)
        assert layer.form == "fp32"
        x = torch.randn(3, 64)
        assert torch.allclose(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)


def test_add_rms_norm(ops):
    g = torch.Generator().manual_seed(3)
    x, d, w = torch.randn(9, 576, generator=g), torch.randn(9, 576, generator=g), torch.randn(576, generator=g)
    stream = x.clone()
    y = ops.add_rms_norm(stream, d, w, 1e-5)
    assert torch.equal(stream, x + d), "the residual stream is updated in place"
    assert torch.allclose(y, F.rms_norm(x + d, (576,), w, 1e-5), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ops.add_rms_norm(x.clone(), None, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-5)
    alone = [ops.add_rms_norm(x[i : i + 1].clone(), d[i : i + 1].clone(), w, 1e-5) for i in range(9)]
    assert torch.equal(torch.cat(alone), y)
    odd = torch.randn(4, 37, generator=g)  # a width that is no multiple of the vector
    assert torch.allclose(ops.add_rms_norm(odd.clone(), None, w[:37], 1e-6), F.rms_norm(odd, (37,), w[:37], 1e-6), atol=1e-5)


def test_silu_mul(ops):
    g = torch.Generator().manual_seed(4)
    gu = torch.randn(6, 3072, generator=g) * 6
    gu[0, :4] = torch.tensor([-200.0, 200.0, 0.0, -0.0])  # saturated and zero gates stay finite
    got = ops.silu_mul(gu)
    ref = F.silu(gu[:, :1536]) * gu[:, 1536:]
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, rtol=2e-6, atol=1e-6)
    assert torch.equal(torch.cat([ops.silu_mul(gu[i : i + 1].clone()) for i in range(6)]), got)


def test_rope_in_place(ops):
    g = torch.Generator().manual_seed(5)
    d, heads = 64, 12
    cos, sin, pos = torch.randn(50, d, generator=g), torch.randn(50, d, generator=g), torch.tensor([3, 0, 49, 7])
    qkv = torch.randn(4, 960, generator=g)
    got = qkv.clone()
    ops.rope_(got, heads, d, cos, sin, pos)
    qk = qkv[:, : heads * d].view(4, heads, d)
    ref = torch.addcmul(qk * cos[pos].unsqueeze(1), torch.roll(qk, d // 2, dims=-1), sin[pos].unsqueeze(1))
    assert torch.allclose(got[:, : heads * d], ref.reshape(4, -1), atol=1e-6)
    assert torch.equal(got[:, heads * d :], qkv[:, heads * d :]), "v is not touched"
    bad = qkv.clone()
    with pytest.raises(RuntimeError, match="position out of the table"):
        ops.rope_(bad, heads, d, cos, sin, torch.tensor([3, 0, 50, 7]))
    assert torch.equal(bad, qkv), "a refused call writes nothing"
