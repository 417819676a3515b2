"""What every ``aios`` command group shares: the one-line usage error, the parser that raises it,
the markdown table, and the kernel options with the checks that run before a slow model load."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEDULERS = ("fifo", "rr", "priority", "sjf", "las")


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (plus where to look), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (readable in a terminal and pasteable into docs)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def positive(kind: type):
    """An argparse ``type`` accepting only positive ``kind`` values."""

    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v

    return conv


def kernel_options(p: argparse.ArgumentParser, scheduler: str = "rr", quantum: int = 8) -> None:
    p.add_argument(
        "--model", default="smollm2", help="smollm2 (embedded), a path, a hub name, or openai:URL#MODEL"
    )
    p.add_argument("--scheduler", choices=SCHEDULERS, default=scheduler, help="agent scheduling policy")
    p.add_argument("--quantum", type=int, default=quantum, help="round-robin time slice in tokens")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together in one step")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every agent's token budgets")
    p.add_argument("--cache-dir", default=None, help="model and metrics cache (default ~/.cache/aios)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def check_model(model: str) -> None:
    """Fail fast (one line) on a model that is clearly not there, before any slow loading."""
    if model.startswith("openai:"):
        rest = model[len("openai:") :]
        if "#" not in rest or not rest.split("#", 1)[0].startswith(("http://", "https://")):
            raise UsageError(f"remote model must look like openai:<http(s) base_url>#<model>, got {model!r}")
        return
    try:
        from aios.kernel.llm import EMBEDDED_MODELS
    except ImportError:  # the engine is not installed: the kernel will say more
        EMBEDDED_MODELS = {"smollm2": None}
    if model in EMBEDDED_MODELS:
        return
    looks_like_path = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or os.sep * 2 in model
    if looks_like_path and not Path(model).expanduser().exists():
        raise UsageError(f"model not found: {model!r} (no such file or directory)")
    if not looks_like_path and os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(model).exists():
        # A hub name offline: transformers would only find it in the local hub cache.
        pass


def make_kernel(args: argparse.Namespace):
    from aios.kernel.kernel import Kernel, KernelConfig

    check_model(args.model)
    try:
        cfg = KernelConfig(
            model=args.model,
            scheduler=args.scheduler,
            quantum=args.quantum,
            max_batch_size=args.max_batch_size,
            cache_dir=args.cache_dir,
        )
    except Exception as exc:  # pydantic ValidationError: show the first problem only
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise UsageError(f"bad kernel option: {msg}") from exc
    return Kernel(cfg)


def load_llm(kernel, quiet: bool) -> None:
    """Build the LLM core now (not at the first syscall) so load errors and time show up front."""
    from tqdm.auto import tqdm

    if quiet:  # transformers draws its own bars while loading weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    bar = tqdm(total=1, desc=f"loading model {kernel.config.model}", disable=quiet, leave=False)
    t0 = time.perf_counter()
    try:
        kernel.llm  # noqa: B018 - the property builds the core
    except Exception as exc:
        bar.close()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load model {kernel.config.model!r}: {first}") from exc
    bar.update(1)
    bar.close()
    if not quiet:
        print(f"model {kernel.config.model} ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
