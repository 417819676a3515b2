"""Program-level scheduling (``las``): ordering by a task's service over all its calls, from recorded events.

Orders are read from the engine's per-step trace (who held rows) and from finish order, never from
timing; the starvation bound is checked on the scheduler with explicit clock values.
"""

from __future__ import annotations

import itertools

from _scheduler_util import call, first_runs, first_served_at

import aios
from aios.kernel.scheduler import LeastAttainedService, Scheduler
from aios.kernel.sequence import SeqStatus, Sequence


def run(engine, calls) -> list[str]:
    """Add the calls in order, run to idle; the agents in the order they first held rows."""
    engine.trace.clear()
    for c in calls:
        engine.add(c)
    engine.run_until_idle()
    assert all(c.status.value == "done" for c in calls), [c.error for c in calls]
    return first_runs(engine)


def test_las_serves_a_new_agent_before_a_heavy_agents_next_call(make_engine):
    orders = {}
    for policy in ("fifo", "las"):
        eng = make_engine(scheduler=policy, max_batch_size=1, quantum=8)
        run(eng, [call("heavy", 14, task_id="t")])  # the heavy agent's first call: 14+ tokens of service
        orders[policy] = run(eng, [call("heavy", 6, task_id="t"), call("light", 6, task_id="t")])
    assert orders["fifo"] == ["heavy", "light"]  # arrival order
    assert orders["las"] == ["light", "heavy"]  # the agent that has received less goes first


def test_las_preempts_a_call_whose_task_crossed_a_level(make_engine):
    eng = make_engine(scheduler="las", max_batch_size=1, quantum=4)
    heavy = call("heavy", 24)
    eng.add(heavy)
    for _ in range(10):  # heavy has decoded ~10 tokens: level 2 with quantum 4
        eng.step()
    light = call("light", 4)
    eng.add(light)
    eng.run_until_idle()
    assert light.finished_at < heavy.finished_at
    assert heavy.result.preemptions == 1 and heavy.result.completion_tokens == 24
    assert light.result.preemptions == 0


_SEQ_IDS = itertools.count()


def _seq(agent: str, arrival: float, task: str | None = None, n: int = 8) -> Sequence:
    sc = call(agent, n, task_id=task)
    return Sequence(syscall=sc, prompt_ids=[1, 2, 3], max_new_tokens=n, arrival=arrival, seq_id=next(_SEQ_IDS))


def _served(pol: LeastAttainedService, agent: str, task: str | None, tokens: int) -> None:
    """Record a finished call of ``tokens`` decode tokens for the task."""
    s = _seq(agent, 0.0, task, n=tokens)
    pol.on_add(s)
    s.output_ids = [[7] * tokens]
    pol.on_remove(s)


def test_task_id_groups_calls_within_one_agent_only():
    pol = LeastAttainedService(quantum=8)
    _served(pol, "a", "x", 40)
    _served(pol, "a", "x", 30)
    assert pol.service(("a", "x")) == 70
    a_x, a_y, b_x = _seq("a", 1.0, "x"), _seq("a", 2.0, "y"), _seq("b", 3.0, "x")
    for s in (a_x, a_y, b_x):
        pol.on_add(s)
    # another task of the same agent starts fresh; another agent naming the same task id is not charged
    assert pol.key(a_y, 4.0) < pol.key(a_x, 4.0)
    assert pol.key(b_x, 4.0) < pol.key(a_x, 4.0)
    assert pol.level(pol.service(("b", "x"))) == 0
    # calls in flight count for their task: a running call's tokens raise its task's level
    a_y.output_ids = [[7] * 20]
    assert pol.level(pol.service(("a", "y"))) == 2  # 20 tokens: [16, 32)


def test_las_max_wait_bounds_starvation():
    pol = LeastAttainedService(quantum=4, max_wait=10.0)
    _served(pol, "hog", None, 500)  # a task with a lot of service behind it
    sched = Scheduler(pol, max_rows=1, max_tokens=1000)
    hog = _seq("hog", 0.0)
    sched.add(hog, now=0.0)
    # a fresh agent arrives every second and would always rank better
    served_at = first_served_at(sched, hog, lambda t: _seq(f"new{int(t)}", t))
    assert served_at is not None and 10.0 <= served_at <= 11.0


def test_sdk_chat_defaults_task_to_the_agents_run(tiny_kernel):
    with aios.agent_context(tiny_kernel, "planner") as ctx:
        aios.chat("hello", max_new_tokens=2)
        aios.chat("again", max_new_tokens=2)
        aios.chat("side task", max_new_tokens=2, task_id="side")
    with aios.agent_context(tiny_kernel, "planner"):
        aios.chat("a new run", max_new_tokens=2)
    tasks = [s.request.task_id for s in tiny_kernel.history(agent="planner", kind="llm")]
    assert tasks[:3] == [ctx.run, ctx.run, "side"]
    assert tasks[3] not in (ctx.run, "side")


def test_a_tasks_next_call_keeps_the_tasks_place_within_its_level():
    """An agent back from a tool call is not queued behind agents that started after it (same level)."""
    pol = LeastAttainedService(quantum=100)
    first = _seq("old", 0.0, "t", n=5)
    pol.on_add(first)
    first.output_ids = [[7] * 5]
    pol.on_remove(first)  # the old agent's first call is done; it is in a tool call
    newer = _seq("new", 1.0, "t")
    follow_up = _seq("old", 2.0, "t")  # the old agent's next call arrives after the newer agent's
    for s in (newer, follow_up):
        pol.on_add(s)
    assert pol.level(pol.service(("old", "t"))) == pol.level(pol.service(("new", "t"))) == 0
    assert pol.key(follow_up, 3.0) < pol.key(newer, 3.0)


def test_las_preempts_across_levels_only():
    """A waiting call of the same level never takes a running call's rows (no swap on a tie); a
    call of a lower level does. Read from the scheduler's plans on an explicit clock."""
    pol = LeastAttainedService(quantum=8)
    sched = Scheduler(pol, max_rows=1, max_tokens=1000)
    young = _seq("young", 1.0, n=30)
    sched.add(young, now=1.0)
    assert sched.schedule(1.0).admit == [young]
    young.status = SeqStatus.RUNNING
    young.output_ids = [[7] * 3]  # level 0 (3 < 8)
    old = _seq("old", 0.5, n=30)  # an older call (say, suspended earlier), also at level 0
    sched.add(old, now=2.0)
    assert pol.key(old, 2.0) < pol.key(young, 2.0)  # old goes first in the queue ...
    assert not sched.schedule(2.0)  # ... but does not preempt a call of its own level
    young.output_ids = [[7] * 9]  # young crossed into level 1: now the level-0 call takes the row
    plan = sched.schedule(3.0)
    assert plan.suspend == [young] and plan.admit == [old]
