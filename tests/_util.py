"""Small helpers any test may use (a module, not a conftest, so tests import them by name).

- ``wait_until``: poll a condition; the timeout is a hang guard far above the expected wait, never
  a measurement (tests assert on what happened, not on how long it took).
- ``free_port``: a loopback TCP port nothing listens on now, for a server a test starts.
- ``make_tiny_kernel``: a ``Kernel`` whose LLM core is an ``LLMEngine`` on conftest's ``tiny_lm``.
"""

from __future__ import annotations

import socket
import time


def wait_until(cond, timeout: float = 120.0) -> bool:
    """Poll ``cond`` until it is true (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_kernel(tiny_lm, data_dir, *, context_window: int | None = None, **config):
    """A kernel on the tiny random model (rr, quantum 4, 8 rows unless ``config`` says otherwise);
    the caller shuts it down."""
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig

    model, tok = tiny_lm
    cfg = KernelConfig(**{"model": "tiny", "scheduler": "rr", "quantum": 4, "max_batch_size": 8,
                          "data_dir": data_dir, **config})  # fmt: skip
    return Kernel(cfg, llm=LLMEngine(model, tok, cfg, context_window=context_window))
