"""Per-agent storage quotas: bytes (items, files and logs together) and stored objects (items + files).

Why: memory had a quota and storage had none, so one agent could fill the kernel's disk. Usage is
read from SQLite (the source of truth) at each write, under a per-agent lock, so concurrent writes
of one agent cannot together overshoot; other agents' writes are not serialised by it. A write
that replaces an existing item or file is charged only the difference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class QuotaExceeded(Exception):
    error_type = "QuotaExceeded"


class StorageQuota:
    def __init__(self, usage: Callable[[str], tuple[int, int]], *, max_bytes: int, max_objects: int):
        self.usage = usage  # agent -> (bytes, objects) stored now
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self._lock = threading.Lock()
        self._agents: dict[str, threading.Lock] = {}

    def _agent_lock(self, agent: str) -> threading.Lock:
        with self._lock:
            return self._agents.setdefault(agent, threading.Lock())

    @contextmanager
    def charging(self, agent: str, replaced: int | None, new_bytes: int, new_objects: int) -> Iterator[None]:
        """Hold the agent's quota while one write runs; ``QuotaExceeded`` (nothing written) if it
        would not fit. ``replaced``: bytes of the item/file this write replaces (None: a new one)."""
        with self._agent_lock(agent):
            used_bytes, used_objects = self.usage(agent)
            add_bytes = new_bytes - (replaced or 0)
            add_objects = new_objects if replaced is None else 0
            if add_bytes > 0 and used_bytes + add_bytes > self.max_bytes:
                raise QuotaExceeded(
                    f"storage quota of {self.max_bytes} bytes exceeded ({used_bytes} used, {add_bytes} more asked)"
                )
            if add_objects > 0 and used_objects + add_objects > self.max_objects:
                raise QuotaExceeded(f"storage quota of {self.max_objects} items and files reached")
            yield
