"""Agent scheduler: every policy's ordering, preemption, aging, the SJF predictor, and batching."""

from __future__ import annotations

import itertools

from _scheduler_util import call, first_served_at

from aios.kernel.scheduler import SJF, LengthPredictor, Priority, RoundRobin, Scheduler
from aios.kernel.sequence import Sequence


def finish_order(engine, calls):
    for c in calls:
        engine.add(c)
    engine.run_until_idle()
    assert all(c.status.value == "done" for c in calls), [c.error for c in calls]
    done = sorted(calls, key=lambda c: c.finished_at)
    return [c.agent for c in done]


def test_fifo_runs_in_arrival_order_without_preemption(make_engine):
    eng = make_engine(scheduler="fifo", max_batch_size=1)
    calls = [call("a", 8), call("b", 3), call("c", 5)]
    assert finish_order(eng, calls) == ["a", "b", "c"]
    assert all(c.result.preemptions == 0 for c in calls)
    # one agent at a time, each to completion
    runs = [t[0] for t in eng.trace if t]
    assert runs == ["a"] * runs.count("a") + ["b"] * runs.count("b") + ["c"] * runs.count("c")


def test_round_robin_interleaves_by_quantum(make_engine):
    eng = make_engine(scheduler="rr", quantum=2, max_batch_size=1)
    calls = [call("a", 6), call("b", 6), call("c", 6)]
    finish_order(eng, calls)
    runs = [t[0] for t in eng.trace if t]
    # slices of 2 tokens in turn: a a b b c c a a ...
    assert runs[:6] == ["a", "a", "b", "b", "c", "c"]
    assert runs[6:8] == ["a", "a"]
    assert all(c.result.preemptions == 2 for c in calls)
    assert all(c.result.completion_tokens == 6 for c in calls)


def test_round_robin_does_not_suspend_when_nobody_waits(make_engine):
    eng = make_engine(scheduler="rr", quantum=1, max_batch_size=4)
    calls = [call("a", 10), call("b", 10)]
    finish_order(eng, calls)
    assert all(c.result.preemptions == 0 for c in calls)


def test_priority_orders_and_preempts(make_engine):
    eng = make_engine(scheduler="priority", aging=0.0, max_batch_size=1)
    calls = [call("low", 5, priority=5), call("high", 5, priority=-5), call("mid", 5, priority=0)]
    assert finish_order(eng, calls) == ["high", "mid", "low"]
    # a better request arriving later preempts the running one (suspended, not restarted)
    eng = make_engine(scheduler="priority", aging=0.0, max_batch_size=1)
    low = call("low", 12, priority=3)
    eng.add(low)
    for _ in range(4):
        eng.step()
    urgent = call("urgent", 4, priority=-3)
    eng.add(urgent)
    eng.run_until_idle()
    assert urgent.finished_at < low.finished_at
    assert low.result.preemptions == 1 and low.result.completion_tokens == 12


_SEQ_IDS = itertools.count()


def _seq(agent: str, arrival: float, **kw) -> Sequence:
    sc = call(agent, kw.pop("n", 8), **kw)
    return Sequence(syscall=sc, prompt_ids=[1, 2, 3], max_new_tokens=sc.request.max_new_tokens, arrival=arrival,
                    seq_id=next(_SEQ_IDS))


def test_priority_aging_prevents_starvation():
    pol = Priority(aging=1.0)
    sched = Scheduler(pol, max_rows=1, max_tokens=1000)
    old = _seq("old", 0.0, priority=10)
    sched.add(old, now=0.0)
    # a stream of fresh high-priority requests arrives every second; each runs one step
    served_old_at = first_served_at(sched, old, lambda t: _seq(f"hi{int(t)}", t, priority=0))
    assert served_old_at is not None and served_old_at <= 12.0


def test_sjf_by_expected_tokens(make_engine):
    eng = make_engine(scheduler="sjf", max_batch_size=1)
    calls = [call("long", 12, expected_tokens=12), call("short", 3, expected_tokens=3), call("mid", 6, expected_tokens=6)]
    assert finish_order(eng, calls) == ["short", "mid", "long"]


def test_sjf_predictor_learns_per_agent():
    pred = LengthPredictor(alpha=0.5)
    assert pred.predict("x", 100) == 100  # nothing known: max_new_tokens
    pred.observe("terse", 4, 100)
    pred.observe("terse", 6, 100)
    pred.observe("verbose", 90, 100)
    assert pred.predict("terse", 100) == 5
    assert pred.predict("verbose", 100) == 90
    assert pred.predict("verbose", 50) == 50  # capped by the budget
    # unknown agents: their own budget scaled by the used fraction (EMA 0.04, 0.05, 0.475 -> 0.475)
    assert pred.predict("new-agent", 200) == 95
    assert pred.predict("new-short", 20) == 10  # still ordered by budget, not by arrival
    pol = SJF(pred)
    a, b = _seq("verbose", 0.0, n=100), _seq("terse", 1.0, n=100)
    pol.on_add(a)
    pol.on_add(b)
    assert pol.key(b, 2.0) < pol.key(a, 2.0)


def test_sjf_uses_history_in_engine(make_engine):
    eng = make_engine(scheduler="sjf", max_batch_size=1)
    finish_order(eng, [call("terse", 2), call("verbose", 14)])  # teach the predictor
    calls = [call("verbose", 14), call("terse", 2)]
    assert finish_order(eng, calls) == ["terse", "verbose"]


def test_round_robin_policy_unit():
    rr = RoundRobin(quantum=3)
    s = _seq("a", 0.0)
    s.quantum_used = 2
    assert not rr.expired(s)
    s.quantum_used = 3
    assert rr.expired(s)


def test_requests_from_several_agents_share_decode_steps(make_engine):
    eng = make_engine(scheduler="fifo", max_batch_size=8)
    calls = [call(f"agent{i}", 10) for i in range(6)]
    finish_order(eng, calls)
    st = eng.stats()
    assert st["rows_per_decode_step"] > 4
    assert max(st["rows_hist"]) == 6
    assert st["decode_steps"] < 6 * 10 / 2


def test_batch_limits_rows_and_tokens(make_engine):
    eng = make_engine(scheduler="fifo", max_batch_size=4, max_batch_tokens=64)
    calls = [call(f"a{i}", 4, num_beams=2) for i in range(3)] + [call("long", 4, prompt="word " * 80)]
    for c in calls:
        eng.add(c)
    eng.run_until_idle()
    assert all(c.status.value == "done" for c in calls)
    assert max(len(t) for t in eng.trace) <= 2  # 2 beams each: at most 2 sequences in 4 rows
    assert max(eng.stats()["rows_hist"]) <= 4
