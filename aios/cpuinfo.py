"""The instruction-set flags this (virtual) CPU reports, from Linux's ``/proc/cpuinfo``.

One reader for everyone who picks code by CPU: the LLM core's dtype (native bf16?), the C++ attention
kernel's compiler flags, llama.cpp's build switches. Kept free of heavy imports, like ``aios.cache``.
Empty where there is no ``/proc/cpuinfo`` (not Linux): callers then take their portable choice.
"""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
