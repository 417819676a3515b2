"""The C++ ragged-attention kernel (``csrc/attention.cpp``) for CPU forwards, built on first use.

``kernel()`` compiles the source with torch's extension builder (g++ and ninja, about a minute
once per machine; the build is cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``, and reused by every later process) and returns the loaded module,
or ``None`` where it cannot be built (no compiler): the runner then keeps the eager path in
``attention``. Which path a runner uses is fixed when it is created, so one engine never mixes
the two (they round differently).

Compiler flags follow this CPU's ``/proc/cpuinfo`` (``-mavx2 -mfma``, ``-mavx512f``) and never
``-march=native``, which some hypervisors answer with instructions they then trap. The kernel's
sums have a fixed order written in the source, so vector width does not change results; fused
multiply-add does (one rounding instead of two), hence the build name carries the flag set.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from aios.cpuinfo import cpu_flags

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("csrc") / "attention.cpp"


def build_flags() -> list[str]:
    have = cpu_flags()
    flags = ["-O3", "-fopenmp"]
    if {"avx2", "fma"} <= have:
        flags += ["-mavx2", "-mfma"]
    if {"avx512f", "avx512bw"} <= have:
        flags += ["-mavx512f", "-mavx512bw"]
    return flags


@functools.cache
def kernel():
    """The built module (``ragged_attention(q, kc, vc, slot, len, scale)``), or ``None``."""
    if os.environ.get("AIOS_NO_CPP_ATTENTION"):
        return None
    from torch.utils.cpp_extension import load

    flags = build_flags()
    name = "aios_attention_" + ("fma" if "-mfma" in flags else "nofma") + ("_512" if "-mavx512f" in flags else "")
    try:
        return load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, a broken toolchain: the eager path still works
        log.warning("C++ attention kernel unavailable (%s); using the eager path", str(exc).splitlines()[0][:200])
        return None


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and kernel() is not None


if __name__ == "__main__":  # `python -m aios.kernel.attention_cpu`: build now (make install does), fail if it cannot
    import sys

    logging.basicConfig(level=logging.INFO)
    built = kernel()
    print(f"C++ attention kernel: {built.__file__ if built else 'NOT built'}  (flags: {' '.join(build_flags())})")
    sys.exit(0 if built is not None else 1)
