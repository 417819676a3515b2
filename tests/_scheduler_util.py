"""Helpers for the scheduling tests: LLM calls to schedule, the order an engine gave them rows, and
a scheduler driven directly on an explicit clock (no engine)."""

from __future__ import annotations

from collections.abc import Callable

from aios.kernel.scheduler import Scheduler
from aios.kernel.sequence import SeqStatus, Sequence
from aios.kernel.syscall import LLMRequest, LLMSyscall


def call(agent: str, n: int = 6, prompt: str = "hello there", **request) -> LLMSyscall:
    """An LLM call of ``agent`` asking for ``n`` new tokens (more request fields as keywords)."""
    return LLMSyscall(
        agent=agent,
        request=LLMRequest(messages=[{"role": "user", "content": prompt}], max_new_tokens=n, **request),
    )


def first_runs(engine) -> list[str]:
    """Agents in the order they first got batch rows (from the engine's per-step trace)."""
    seen: list[str] = []
    for step in engine.trace:
        for a in step:
            if a not in seen:
                seen.append(a)
    return seen


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
