"""Shared helpers for the LLM-core benchmarks: model loading, prompts, result files, machine info."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parents[1] / "tests"

TOPICS = [
    "a robot who learns to paint", "a lighthouse keeper", "a dragon who is afraid of fire", "a lost cat in Paris",
    "a detective on Mars", "a chef who cannot taste", "a tree that walks", "a girl who talks to whales",
    "an old clock maker", "a city under the sea", "a time-travelling teacher", "a shy volcano",
    "a pirate who hates water", "a library that never closes", "a snowman in summer", "a quiet thunderstorm",
]


def story_messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]}."}]


def load_bench_model(name: str, *, window: int = 512):
    """(model, tokenizer). ``tiny``: the tests' random 2-layer Llama (built in a second, no download;
    for checking a benchmark runs, its speed figures mean nothing); any other name goes to
    ``aios.kernel.llm.load_model``. ``window``: the tiny model's context length."""
    if name == "tiny":
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from conftest import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        return build_tiny_model(tok, window=window), tok
    from aios.kernel.llm import load_model

    return load_model(name)


def machine_info(threads: int) -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = [" | ".join(c.ljust(widths[c]) for c in cols), "-+-".join("-" * widths[c] for c in cols)]
    lines += [" | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)
