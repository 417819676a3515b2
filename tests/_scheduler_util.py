"""Helpers for tests that drive ``aios.kernel.scheduler`` directly, on an explicit clock (no engine)."""

from __future__ import annotations

from collections.abc import Callable

from aios.kernel.scheduler import Scheduler
from aios.kernel.sequence import SeqStatus, Sequence


def first_served_at(
    sched: Scheduler, target: Sequence, arrive: Callable[[float], Sequence], steps: int = 40
) -> float | None:
    """Step a one-row scheduler at t = 0, 1, 2, ...: at each t ``arrive(t)`` adds a fresh sequence,
    the plan is applied, and whoever holds the row runs one step and finishes. Returns the first t
    at which ``target`` holds the row (None: never, within ``steps``): a starvation bound, read
    from the scheduler's own decisions rather than from timing."""
    for i in range(steps):
        t = float(i)
        sched.add(arrive(t), now=t)
        plan = sched.schedule(t)
        for s in plan.suspend:
            s.status = SeqStatus.SUSPENDED
        for s in plan.admit + plan.resume:
            s.status = SeqStatus.RUNNING
        running = sched.running[0]
        if running is target:
            return t
        sched.finished(running)
    return None
