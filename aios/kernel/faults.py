"""Containing faults of the forward pass to the requests they belong to.

Two failure modes of a batched forward, and what the engine does about each:

- The batched decode *raises* (an out-of-memory, a kernel bug triggered by one row's input, a
  transient error). Failing every request in the batch would punish the innocent. Each sequence's
  rows are run again on their own (``decode_isolated``): with the fixed-shape, batch-invariant
  decode a row's numerics do not depend on who else is in the forward, so a survivor's logits are
  exactly those the batched forward would have produced, and its tokens do not change. Only the
  sequences whose own forward still raises fail, with a typed ``EngineError``. Rows the raising
  forward may have half-written are rewritten by the retry (same slot, same position).
- The forward *returns* NaN or infinite logits for a row (a corrupted KV slot, an overflow). Greedy
  argmax over NaNs picks a token silently, so the engine checks every row before sampling
  (``require_finite``) and fails only that request, typed ``NumericalError``. Rows are independent
  (per-row attention; the linear layers act row by row), so one poisoned row cannot spread.
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


def decode_isolated(
    runner: Any, seqs: list[Any], fail: Callable[[Any, str, str], None]
) -> tuple[list[Any], torch.Tensor | None]:
    """Run each sequence's decode rows alone after a batched decode raised.

    Returns the sequences that succeeded and their logits concatenated in the same order (what the
    batched forward would have returned for them); ``fail(seq, type, message)`` is called for each
    one whose own forward raises.
    """
    kept: list[Any] = []
    parts: list[torch.Tensor] = []
    for s in seqs:
        rows = [(s.slots[j], ids[-1], s.kv_len) for j, ids in enumerate(s.output_ids)]
        try:
            parts.append(runner.decode(rows))
        except Exception as exc:  # this request's own forward fails: it alone is failed
            fail(s, "EngineError", f"decode failed for this request: {type(exc).__name__}: {exc}")
        else:
            kept.append(s)
    return kept, (torch.cat(parts) if parts else None)
