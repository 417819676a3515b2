"""BPF C as text: the program in a model's answer, and the tunables a scheduler declares.

Why text-level: a tuned candidate is a *new program* (its tunables' initial values rewritten in the
source), so it goes through every verifier stage like any other, and its digest names it.
"""

from __future__ import annotations

import re

_CODE_RE = re.compile(r"```(?:c|C|bpf)?\s*\n(.*?)```", re.S)
_TUNABLE_RE = re.compile(
    r"(const\s+volatile\s+[us](?:8|16|32|64)\s+(\w+)\s*=\s*)(\d+)(ULL|ull|UL|ul|U|u)?\s*;"
)


def extract_code(text: str) -> str:
    """The BPF C in a model's answer: the longest fenced block, else the text itself."""
    blocks = _CODE_RE.findall(text)
    if blocks:
        return max(blocks, key=len).strip() + "\n"
    return text.strip() + "\n"


def source_tunables(source: str) -> dict[str, int]:
    """``const volatile u64`` tunables declared in a scheduler's source, with their defaults."""
    return {m.group(2): int(m.group(3)) for m in _TUNABLE_RE.finditer(source)}


def set_tunables(source: str, values: dict[str, int]) -> str:
    """Rewrite tunables' initial values in the source (a new program, verified like any other)."""

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name in values:
            return f"{m.group(1)}{int(values[name])}ULL;"
        return m.group(0)

    return _TUNABLE_RE.sub(sub, source)
