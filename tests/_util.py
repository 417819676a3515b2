"""Small helpers any test may use (a module, not a conftest, so tests import them by name).

- ``wait_until``: poll a condition; the timeout is a hang guard far above the expected wait, never
  a measurement (tests assert on what happened, not on how long it took).
- ``free_port``: a loopback TCP port nothing listens on now, for a server a test starts.
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
