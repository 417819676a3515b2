"""Admission of tool calls: concurrency limits and mutual exclusion, with waiting calls holding no thread.

Why: a tool call that waited for a free slot used to block one of the kernel's worker threads, so
nine queued ``python`` calls of one agent took every worker and starved all other agents, even
those calling other tools. Here a call that cannot start is only a record in a queue; when a slot
frees, the next call is handed to the kernel's pool (``spawn``).

Each call names the slots it needs (``keys``: its tool's concurrency slots, its exclusion group);
it starts only when all of them have room, and takes them all at once, so two tools cannot
deadlock each other. Waiting calls are served **round robin across agents** (first come, first
served within one agent): an agent that queues many calls delays another agent's call by at most
one call per agent ahead of it, never by its whole backlog. An agent may have at most
``per_agent`` calls waiting (past that, its new calls fail at once with ``ToolBusy``) and at most
``per_agent_running`` running (the key ``agent:NAME`` every call holds), so one agent's slow calls
of a tool without limits cannot occupy the kernel's worker threads either.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field


class ToolBusy(Exception):
    error_type = "ToolBusy"


@dataclass
class _Waiting:
    keys: tuple[str, ...]
    start: Callable[[], None]  # runs the call (on the kernel's pool); releases its keys when done
    fail: Callable[[Exception], None]
    since: float = field(default_factory=time.monotonic)


class ToolQueue:
    def __init__(
        self,
        spawn: Callable[[Callable[[], None]], None],
        *,
        per_agent: int = 32,
        per_agent_running: int = 2,
        max_wait: float = 300.0,
    ):
        self._spawn = spawn
        self.per_agent = per_agent
        self.per_agent_running = per_agent_running
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._capacity: dict[str, int] = {}
        self._in_use: Counter[str] = Counter()
        self._waiting: dict[str, deque[_Waiting]] = {}  # agent -> its waiting calls, oldest first
        self._served: dict[str, int] = {}  # agent -> tick of its last admitted call (round robin)
        self._tick = 0
        self.started = 0  # counters for tests and metrics
        self.refused = 0
        self._closed = False

    def set_capacity(self, key: str, slots: int) -> None:
        with self._lock:
            self._capacity[key] = slots

    def drop_capacity(self, key: str) -> None:
        with self._lock:
            self._capacity.pop(key, None)

    def waiting(self, key: str | None = None, agent: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for a, q in self._waiting.items()
                if agent is None or a == agent
                for w in q
                if key is None or key in w.keys
            )

    def running(self, key: str) -> int:
        with self._lock:
            return self._in_use[key]

    def submit(self, agent: str, keys: tuple[str, ...], start: Callable[[], None], fail: Callable[[Exception], None]) -> None:
        """Queue a call; it starts (through ``spawn``) as soon as its keys have room and its turn comes."""
        with self._lock:
            if self._closed:
                raise ToolBusy("the kernel is shutting down")
            q = self._waiting.get(agent)
            if q is not None and len(q) >= self.per_agent:
                self.refused += 1
                raise ToolBusy(f"{agent} already has {len(q)} tool calls waiting (limit {self.per_agent})")
            self._waiting.setdefault(agent, deque()).append(_Waiting(keys, start, fail))
            ready = self._pick()
        self._run(ready)

    def release(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for k in keys:
                self._in_use[k] -= 1
            ready = self._pick()
        self._run(ready)

    def capacity(self, key: str) -> int:
        if key.startswith("agent:"):
            return self.per_agent_running
        return self._capacity.get(key, 1 << 30)

    def _fits(self, keys: tuple[str, ...]) -> bool:
        return all(self._in_use[k] < self.capacity(k) for k in keys)

    def _pick(self) -> list[_Waiting]:
        """Under the lock: take every call that can start now. The turn goes to the agent served
        least recently (never served first, then in arrival order); within an agent, its oldest
        call that fits."""
        ready: list[_Waiting] = []
        now = time.monotonic()
        while True:
            best: tuple[int, str, _Waiting] | None = None
            for agent, q in self._waiting.items():
                for w in list(q):
                    if now - w.since > self.max_wait:
                        q.remove(w)
                        ready.append(_Waiting((), lambda w=w: w.fail(ToolBusy(f"waited {self.max_wait:g}s in the queue")), w.fail))
                        continue
                    if self._fits(w.keys):
                        turn = self._served.get(agent, -1)
                        if best is None or turn < best[0]:
                            best = (turn, agent, w)
                        break
            for agent in [a for a, q in self._waiting.items() if not q]:
                del self._waiting[agent]
            if best is None:
                return ready
            _, agent, w = best
            self._waiting[agent].remove(w)
            if not self._waiting[agent]:
                del self._waiting[agent]
            for k in w.keys:
                self._in_use[k] += 1
            self._tick += 1
            self._served[agent] = self._tick
            ready.append(w)

    def _run(self, ready: list[_Waiting]) -> None:
        for w in ready:
            if not w.keys:  # an expired call: only its failure runs
                w.start()
                continue
            self.started += 1
            try:
                self._spawn(w.start)
            except RuntimeError as exc:  # the pool is shut down
                self.release(w.keys)
                w.fail(ToolBusy(f"the kernel is shutting down: {exc}"))

    def close(self) -> None:
        """Fail every waiting call (the kernel is shutting down)."""
        with self._lock:
            self._closed = True
            left = [w for q in self._waiting.values() for w in q]
            self._waiting.clear()
        for w in left:
            w.fail(ToolBusy("the kernel shut down before this call could start"))
