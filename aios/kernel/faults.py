"""Containing faults of the forward pass to the requests they belong to.

Two failure modes of a batched forward, and what the engine does about each:

- The batched decode *raises* (an out-of-memory, a kernel bug triggered by one row's input, a
  transient error). Failing every request in the batch would punish the innocent. Each sequence's
  chunks are run again on their own (``run_isolated``): with the batch-invariant forward (see
  ``model_runner``) a row's numerics do not depend on who else is in it, so a survivor's logits are
  exactly those the batched forward would have produced, and its tokens do not change. Only the
  sequences whose own forward still raises fail, with a typed ``EngineError``. Rows the raising
  forward may have half-written are rewritten by the retry (same slot, same position).
- The forward *returns* NaN or infinite logits for a row (a corrupted KV slot, an overflow). Greedy
  argmax over NaNs picks a token silently, so the engine checks every row before sampling
  (``require_finite``) and fails only that request, typed ``NumericalError``. Rows are independent
  (per-row attention; the linear layers act row by row), so one poisoned row cannot spread; a
  failed request's slots are zeroed before reuse, since attention multiplies a row's masked tail
  by zero and ``0 * NaN`` is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class NumericalError(RuntimeError):
    error_type = "NumericalError"


def require_finite(logits: torch.Tensor) -> None:
    """Raise ``NumericalError`` if any logit of this request's rows is NaN or infinite."""
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(dim=-1).sum()) if logits.dim() > 1 else 1
        raise NumericalError(
            f"the forward pass returned non-finite logits for {bad} row(s) of this request; "
            "sampling from them would produce garbage"
        )


def run_isolated(
    runner: Any, items: list[tuple[Any, list[Any]]], fail: Callable[[Any, str, str], None]
) -> list[torch.Tensor | None]:
    """Run each sequence's chunks alone after a batched forward raised.

    ``items`` are ``(seq, chunks)``; returns per item its logits (what the batched forward would
    have returned for it) or ``None`` where its own forward raised, after ``fail(seq, type, message)``.
    """
    out: list[torch.Tensor | None] = []
    for seq, chunks in items:
        try:
            out.append(runner.run(chunks))
        except Exception as exc:  # this request's own forward fails: it alone is failed
            what = "prefill" if len(chunks[0].ids) > 1 else "decode"
            fail(seq, "EngineError", f"{what} failed for this request: {type(exc).__name__}: {exc}")
            out.append(None)
    return out
