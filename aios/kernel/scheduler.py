"""The agent scheduler: which sequences hold batch rows in the next step.

A *policy* is a small class that orders the ready queue (``key``: lower runs first) and says when
a running sequence should give its rows up (``expired`` for time slices, ``preemptive`` plus a
``rank`` comparison for better jobs waiting: ``rank`` is the part of the key that may preempt, the
whole key unless the policy says otherwise). The ``Scheduler`` applies a policy under the batch
limits (``max_rows`` rows, beams count; ``max_tokens`` prefill+decode tokens per step) and
returns a ``Plan``: who is suspended (their KV goes to the context manager), who resumes (KV comes
back, no recompute) and who is admitted (prefill). A sequence that loses its place is suspended,
never restarted.

Policies
--------
- ``FIFO``: arrival order, run to completion, never preempts.
- ``RoundRobin(quantum)``: ready-queue order; a running sequence that generated ``quantum`` tokens
  since it was (re)scheduled goes to the back of the queue *if someone is waiting* (otherwise its
  slice is renewed and nothing is suspended).
- ``Priority(aging)``: lower ``request.priority`` first. Effective priority = priority − aging ×
  seconds spent waiting in the ready queue (accumulated over the request's life, frozen while it
  runs), so a low-priority request eventually outranks newer high-priority ones: nothing
  starves. Preemptive: a ready request with a strictly better effective priority takes the rows
  of the worst running one when the batch is full.
- ``SJF``: shortest remaining job first, preemptive (SRTF). Remaining = expected length − tokens
  generated. Expected length is ``request.expected_tokens`` when given, else ``LengthPredictor``:
  an exponential moving average (α = 0.5) of the completion lengths of the *same agent's* earlier
  requests (agents tend to repeat the same kind of call); for an agent it has not seen yet, the
  request's own ``max_new_tokens`` scaled by the fraction of their budget that requests have used so
  far (an EMA over all agents): the budget is the caller's own statement about the request, so new
  agents are still ordered by it, and the fraction calibrates it. With no history at all, the
  budget itself; always capped at ``max_new_tokens``.
- ``LeastAttainedService(quantum, max_wait)`` (``las``): program-level scheduling after Autellix. An
  agent is a chain of calls, so a call is ranked by what its *task* has consumed so far over all
  its calls (prefill tokens computed, weighted, plus decode tokens), not by anything about the call
  itself: no length hints needed. A task is ``(agent, request.task_id)``; the SDK fills ``task_id``
  with the agent's run, and an agent may name its own groups (``aios.chat(..., task_id="plan")``).
  The key is agent-scoped, so no agent can charge or credit another's task. Service is bucketed
  into levels that double (level 0 below ``quantum`` tokens, then ``[q, 2q)``, ``[2q, 4q)`` ...),
  the multilevel-queue form of least attained service: a task that has received little service (a
  short agent, or one just starting) goes ahead of one that has received a lot.
  Inside a level the order is the *task's* age (its first call's arrival), not the call's: an agent
  back from a tool call keeps its place ahead of agents that started after it, so a level drains
  program by program (FCFS among equals, which finishes programs sooner on average than sharing
  the rows among them) instead of sending every follow-up call to the back.
  Only the level preempts (``rank`` is (starving, level)): a running call gives its rows up when its
  task crosses into a level above a waiting call's, never to a waiting call of its own level. With
  the whole key preempting (as before), a task crossing into a level where an older call waited
  was swapped out at once and swapped back at the next crossing (on the agent mix: 23 preemptions
  on average, 17 with only the level preempting, and 0.64x against 0.61x of FIFO's turnaround;
  ``benchmarks/sim_agent_mix.py``).
  Starvation: a call that has waited ``max_wait`` seconds in total runs ahead of, and preempts,
  every call that has not (oldest first).
  What it cannot do: it knows nothing of a call's length, so when agents arrive together it shares
  the rows among them much as round robin would, level by level. On the heavy-tailed multi-turn mix
  of ``bench_agent_serving`` (2026-12-03, today's engine) LAS + reuse measured 0.48x of FIFO without
  reuse, RR + reuse 0.48x, FIFO + reuse 0.49x and clairvoyant SJF + reuse 0.45x (SJF is clairvoyant
  there: ``max_new_tokens`` is exactly each call's length). Since decode steps became ~10 ms, prefill
  is most of FIFO's time, so reuse does most of that gain and the order the rest; on the older,
  slower engine the order mattered more (LAS 0.55-0.63x, clairvoyant SRPT 0.43-0.50x;
  ``benchmarks/results/agent_mix_sim.md`` simulates both).

Ties break by arrival, so every policy is deterministic for a given arrival order.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from aios.kernel.sequence import SeqStatus, Sequence


class Policy:
    name = "base"
    preemptive = False

    def key(self, seq: Sequence, now: float) -> tuple:
        raise NotImplementedError

    def rank(self, seq: Sequence, now: float) -> tuple:
        """The part of ``key`` that preempts: a ready sequence takes a running one's rows only when
        its rank is strictly better (the rest of the key orders the queue without preempting)."""
        return self.key(seq, now)

    def expired(self, seq: Sequence) -> bool:
        """True when a running sequence's time slice is over."""
        return False

    def on_add(self, seq: Sequence) -> None:
        """Called when a request enters the engine."""

    def observe(self, seq: Sequence) -> None:
        """Called when a request finishes (predictors learn here)."""

    def on_remove(self, seq: Sequence) -> None:
        """Called when a request leaves the engine, finished or failed."""


class FIFO(Policy):
    name = "fifo"

    def key(self, seq: Sequence, now: float) -> tuple:
        return (seq.arrival, seq.seq_id)


class RoundRobin(Policy):
    name = "rr"

    def __init__(self, quantum: int = 8):
        if quantum < 1:
            raise ValueError("quantum must be >= 1 token")
        self.quantum = quantum

    def key(self, seq: Sequence, now: float) -> tuple:
        # a ticket, not a timestamp: sequences whose slices expire in the same step queue up in
        # batch order behind everyone already waiting (timestamps would tie and favour low ids)
        return (seq.ready_order,)

    def expired(self, seq: Sequence) -> bool:
        return seq.quantum_used >= self.quantum


class Priority(Policy):
    name = "priority"
    preemptive = True

    def __init__(self, aging: float = 1.0):
        self.aging = aging

    def effective(self, seq: Sequence, now: float) -> float:
        waited = seq.waited + (now - seq.ready_since if seq.status is not SeqStatus.RUNNING else 0.0)
        return seq.request.priority - self.aging * waited

    def key(self, seq: Sequence, now: float) -> tuple:
        return (self.effective(seq, now), seq.arrival, seq.seq_id)


class LengthPredictor:
    """Per-agent EMA of completion lengths, and the EMA of the used fraction of the budget (see module docstring)."""

    def __init__(self, alpha: float = 0.5):
        self.alpha = alpha
        self.per_agent: dict[str, float] = {}
        self.budget_used: float | None = None  # EMA over all agents of tokens generated / max_new_tokens

    def predict(self, agent: str, max_new_tokens: int) -> int:
        est = self.per_agent.get(agent)
        if est is None:
            est = max_new_tokens if self.budget_used is None else max_new_tokens * self.budget_used
        return max(1, min(max_new_tokens, round(est)))

    def observe(self, agent: str, n_tokens: int, max_new_tokens: int | None = None) -> None:
        a = self.alpha
        prev = self.per_agent.get(agent)
        self.per_agent[agent] = n_tokens if prev is None else a * n_tokens + (1 - a) * prev
        if max_new_tokens:
            used = min(1.0, n_tokens / max_new_tokens)
            self.budget_used = used if self.budget_used is None else a * used + (1 - a) * self.budget_used


class SJF(Policy):
    name = "sjf"
    preemptive = True

    def __init__(self, predictor: LengthPredictor | None = None):
        self.predictor = predictor or LengthPredictor()

    def on_add(self, seq: Sequence) -> None:
        req = seq.request
        if req.expected_tokens is not None:
            seq.predicted_tokens = min(req.expected_tokens, seq.max_new_tokens)
        else:
            seq.predicted_tokens = self.predictor.predict(seq.agent, seq.max_new_tokens)

    def remaining(self, seq: Sequence) -> int:
        return max(1, seq.predicted_tokens - seq.tokens_generated)

    def key(self, seq: Sequence, now: float) -> tuple:
        return (self.remaining(seq), seq.arrival, seq.seq_id)

    def observe(self, seq: Sequence) -> None:
        if seq.request.expected_tokens is None:
            self.predictor.observe(seq.agent, seq.tokens_generated, seq.max_new_tokens)


@dataclass
class TaskService:
    """What ``LeastAttainedService`` knows of one task: when it began, and the service it has had."""

    since: float  # arrival of the task's first call: the task's place within its level
    finished: float = 0.0  # service of its finished calls
    live: set[Sequence] = field(default_factory=set)  # its calls in the engine


class LeastAttainedService(Policy):
    """Program-level least attained service with doubling levels and a max-wait bound (module docstring)."""

    name = "las"
    preemptive = True

    def __init__(
        self, quantum: int = 8, max_wait: float = 30.0, prefill_weight: float = 0.125, max_tasks: int = 65536
    ):
        if quantum < 1:
            raise ValueError("quantum must be >= 1 token")
        self.quantum = quantum
        self.max_wait = max_wait
        # a prefilled token is computed with many others in one forward: about 1/8 of a decode row at
        # 8 rows on the machine it was first measured on (~650 prefill tokens/s against ~80 decode
        # rows/s), about 1/15 at 2 rows on this 2-core VM. The order barely depends on it: on the agent
        # mix 1/8 and 1/15 are within 0.02x of each other (benchmarks/results/agent_mix_sim.md)
        self.prefill_weight = prefill_weight
        self.max_tasks = max_tasks
        self.tasks: OrderedDict[tuple[str, str], TaskService] = OrderedDict()  # least recently active first

    @staticmethod
    def task(seq: Sequence) -> tuple[str, str]:
        return (seq.agent, seq.request.task_id or "")

    def call_service(self, seq: Sequence) -> float:
        return seq.prefill_computed * self.prefill_weight + seq.tokens_generated * seq.num_rows

    def service(self, task: tuple[str, str]) -> float:
        """What the task has received: its finished calls plus its calls in flight."""
        t = self.tasks.get(task)
        return 0.0 if t is None else t.finished + sum(self.call_service(s) for s in t.live)

    def level(self, service: float) -> int:
        return int(service // self.quantum).bit_length()

    def on_add(self, seq: Sequence) -> None:
        task = self.task(seq)
        t = self.tasks.get(task)
        if t is None:
            t = self.tasks[task] = TaskService(since=seq.arrival)
        t.live.add(seq)
        self.tasks.move_to_end(task)
        if len(self.tasks) > self.max_tasks:  # forget the longest-idle tasks (bounded memory), not live ones
            for old in [k for k, v in self.tasks.items() if not v.live][: len(self.tasks) - self.max_tasks]:
                del self.tasks[old]

    def on_remove(self, seq: Sequence) -> None:
        t = self.tasks.get(self.task(seq))
        if t is None or seq not in t.live:
            return
        t.live.discard(seq)
        t.finished += self.call_service(seq)

    def rank(self, seq: Sequence, now: float) -> tuple:
        waited = seq.waited + (now - seq.ready_since if seq.status is not SeqStatus.RUNNING else 0.0)
        starving = waited >= self.max_wait
        return (0 if starving else 1, self.level(self.service(self.task(seq))))

    def key(self, seq: Sequence, now: float) -> tuple:
        t = self.tasks.get(self.task(seq))
        return (*self.rank(seq, now), seq.arrival if t is None else t.since, seq.arrival, seq.seq_id)


def make_policy(name: str, quantum: int = 8, aging: float = 1.0, max_wait: float = 30.0) -> Policy:
    if name == "fifo":
        return FIFO()
    if name == "rr":
        return RoundRobin(quantum)
    if name == "priority":
        return Priority(aging)
    if name == "sjf":
        return SJF()
    if name == "las":
        return LeastAttainedService(quantum, max_wait)
    raise ValueError(f"unknown scheduling policy {name!r}")


@dataclass
class Plan:
    suspend: list[Sequence] = field(default_factory=list)
    resume: list[Sequence] = field(default_factory=list)
    admit: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.suspend or self.resume or self.admit)


class Scheduler:
    """Ready queue + running set under a policy and the batch limits. Used by one engine thread."""

    def __init__(self, policy: Policy, max_rows: int, max_tokens: int):
        self.policy = policy
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.ready: list[Sequence] = []  # WAITING or SUSPENDED
        self.running: list[Sequence] = []
        self._tickets = itertools.count()

    # -- queue changes -----------------------------------------------------------------------------
    def add(self, seq: Sequence, now: float) -> None:
        seq.ready_since = now
        seq.ready_order = next(self._tickets)
        self.policy.on_add(seq)
        self.ready.append(seq)

    def remove(self, seq: Sequence) -> None:
        """A sequence left the engine (finished or failed)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.ready:
            self.ready.remove(seq)
        self.policy.on_remove(seq)

    def finished(self, seq: Sequence) -> None:
        self.remove(seq)
        self.policy.observe(seq)

    def has_work(self) -> bool:
        return bool(self.ready or self.running)

    @property
    def rows_in_use(self) -> int:
        return sum(s.num_rows for s in self.running)

    # -- the decision ------------------------------------------------------------------------------
    def schedule(self, now: float) -> Plan:
        """Decide the next step's running set. Mutates ``ready``/``running``; the engine applies the plan."""
        policy = self.policy
        old_running = list(self.running)
        # 1. time slices: expired sequences go to the back of the queue when someone waits
        if self.ready:
            for seq in [s for s in self.running if policy.expired(s)]:
                self.running.remove(seq)
                self._to_ready(seq, now)
        for seq in self.running:
            if policy.expired(seq):
                seq.quantum_used = 0  # nobody waits: renew the slice
        # 2. fill free rows in policy order; 3. preempt worse running sequences for better ready ones
        order = sorted(self.ready, key=lambda s: policy.key(s, now))
        rows = self.rows_in_use
        tokens = rows  # each running row decodes one token
        prefilled = 0
        for cand in order:
            need_tokens = len(cand.prompt_ids) if cand.status is SeqStatus.WAITING else 0
            fits_rows = rows + cand.num_rows <= self.max_rows
            fits_tokens = tokens + need_tokens <= self.max_tokens or (need_tokens and prefilled == 0 and not self.running)
            if not fits_rows and policy.preemptive:
                fits_rows = self._preempt_for(cand, now)
                rows = self.rows_in_use
                tokens = rows + prefilled
            if not (fits_rows and fits_tokens):
                break
            self._to_running(cand, now)
            rows += cand.num_rows
            tokens += max(need_tokens, cand.num_rows)
            prefilled += need_tokens
        plan = Plan()
        for seq in old_running:
            if seq not in self.running:
                plan.suspend.append(seq)
        for seq in self.running:
            if seq not in old_running:
                (plan.admit if seq.status is SeqStatus.WAITING else plan.resume).append(seq)
        return plan

    def _preempt_for(self, cand: Sequence, now: float) -> bool:
        """Suspend running sequences that rank worse than ``cand`` until it fits; True if it does."""
        policy = self.policy
        cand_rank = policy.rank(cand, now)
        victims = sorted(self.running, key=lambda s: policy.key(s, now), reverse=True)
        free = self.max_rows - self.rows_in_use
        chosen = []
        for v in victims:
            if free >= cand.num_rows:
                break
            if not policy.rank(v, now) > cand_rank:
                break
            chosen.append(v)
            free += v.num_rows
        if free < cand.num_rows:
            return False
        for v in chosen:
            self.running.remove(v)
            self._to_ready(v, now)
        return True

    def _to_ready(self, seq: Sequence, now: float) -> None:
        seq.ready_since = now
        seq.ready_order = next(self._tickets)
        self.ready.append(seq)

    def _to_running(self, seq: Sequence, now: float) -> None:
        self.ready.remove(seq)
        seq.waited += now - seq.ready_since
        seq.quantum_used = 0
        self.running.append(seq)
