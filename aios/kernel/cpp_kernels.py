"""The LLM core's C++ kernels for CPU forwards (``csrc/*.cpp``), built on first use.

- ``attention()``: ragged attention over the slot KV cache (``csrc/attention.cpp``);
- ``linear()``: ``x @ W.T + b`` over weights packed once into column panels (``csrc/linear.cpp``);
- ``rowwise()``: a decoder layer's row-wise glue, one call each: residual add + RMSNorm, rotary
  embedding, the SiLU-gated product (``csrc/rowwise.cpp``).

All compute every sum in one fixed order that no other row can change, so a row gets the same bits
alone or in any batch: the engine's exactness holds by construction where they are used.

Each is compiled with torch's extension builder (g++ and ninja, about a minute once per machine;
the build is cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``, and
reused by every later process). A function returns the loaded module, or ``None`` where it cannot
be built (no compiler; for ``linear`` and ``attention``, a CPU without AVX2 and FMA) or is switched off
(``AIOS_NO_CPP_ATTENTION=1``, ``AIOS_NO_CPP_LINEAR=1``, ``AIOS_NO_CPP_ROWWISE=1``): the callers then keep their eager or
oneDNN paths. Which path a runner uses is fixed when it is created, so one engine never mixes them
(they round differently).

Compiler flags follow this CPU's ``/proc/cpuinfo`` (``-mavx2 -mfma``, ``-mavx512f``) and never
``-march=native``, which some hypervisors answer with instructions they then trap. The sums have a
fixed order written in the source, so vector width does not change results; fused multiply-add
does (one rounding instead of two), hence the build name carries the flag set.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import torch

from aios.cpuinfo import cpu_flags

log = logging.getLogger(__name__)
CSRC = Path(__file__).with_name("csrc")


def build_flags() -> list[str]:
    have = cpu_flags()
    flags = ["-O3", "-fopenmp"]
    if {"avx2", "fma"} <= have:
        flags += ["-mavx2", "-mfma"]
    if {"avx512f", "avx512bw"} <= have:
        flags += ["-mavx512f", "-mavx512bw"]
    return flags


@functools.cache
def _load(stem: str):
    if os.environ.get(f"AIOS_NO_CPP_{stem.upper()}"):
        return None
    from torch.utils.cpp_extension import load

    # torch rebuilds when a source changes, not a header: the shared header's digest goes in the flags
    flags = build_flags() + [f"-DAIOS_VEC_H={hashlib.sha256((CSRC / 'vec.h').read_bytes()).hexdigest()[:16]}"]
    name = f"aios_{stem}_" + ("fma" if "-mfma" in flags else "nofma") + ("_512" if "-mavx512f" in flags else "")
    try:
        return load(name=name, sources=[str(CSRC / f"{stem}.cpp")], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a broken toolchain: the other paths still work
        log.warning("C++ %s kernel unavailable (%s); using the torch path", stem, str(exc).splitlines()[0][:200])
        return None


def attention():
    """``ragged_attention(q, k, v, kc, vc, slot, pos, scale)``, or ``None`` (needs AVX2 and FMA: intrinsics)."""
    return _load("attention") if {"avx2", "fma"} <= cpu_flags() else None


def linear():
    """``pack(w, dtype)`` and ``linear(x, packed, n, bias)``, or ``None`` (needs AVX2 and FMA: intrinsics)."""
    return _load("linear") if {"avx2", "fma"} <= cpu_flags() else None


def rowwise():
    """``add_rms_norm(x, delta, w, eps)``, ``rope_(x, heads, d, cos, sin, pos)``, ``silu_mul(gu)``, or ``None``."""
    return _load("rowwise")


def attention_usable(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and attention() is not None


def linear_usable(device: torch.device | str, dtype: torch.dtype) -> bool:
    """float32 on CPU (bf16 models keep oneDNN, which has native bf16 dot products where bf16 is the default)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and linear() is not None


if __name__ == "__main__":  # `python -m aios.kernel.cpp_kernels`: build now (make install does), fail if one cannot
    import sys

    logging.basicConfig(level=logging.INFO)
    ok = True
    for stem, built in (("attention", attention()), ("linear", linear()), ("rowwise", rowwise())):
        print(f"C++ {stem} kernel: {built.__file__ if built else 'NOT built'}  (flags: {' '.join(build_flags())})")
        ok = ok and (built is not None or stem != "rowwise" and not {"avx2", "fma"} <= cpu_flags())
    sys.exit(0 if ok else 1)
