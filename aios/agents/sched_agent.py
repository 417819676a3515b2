"""The sched-agent: observes a workload, then synthesizes, verifies, measures and learns CPU schedulers.

Why it is an ordinary agent: every step it takes is a syscall — the LLM (goal inference, candidate
choice, code writing), tools (the sched_ext toolchain's profile / search / compile / verify /
measure / stress / deploy, registered in the kernel's ToolManager by ``aios.sched_ext.tools``),
memory (the profile and the running feedback) and storage (every result).  So it is scheduled,
audited and access-controlled like any other agent and can run beside others on one kernel.

The loop is SchedCP's in-context reinforcement learning with four roles:

* **observation** — the cheapest profile tier first, kept in memory;
* **planning** — the LLM infers the goal from the user's words and the profile (constrained to the
  goal list with ``choices``, so even the embedded SmolLM2 answers validly; its worked examples are
  the nearest ones in storage) and proposes a candidate: a repository scheduler with a tunable
  changed, or a new one (compose mode: building blocks chosen field by field with ``choices``;
  write mode: BPF C written by the model);
* **execution** — round one screens the repository's closest schedulers together (one boot to
  verify them all, one to measure them all against EEVDF); each later round compiles, verifies
  (all stages) and measures one candidate against EEVDF in one VM boot;
* **learning** — every result goes to the policy repository and the agent's storage; verifier
  errors and measurements are fed into the next round; the loop stops when gains flatten or the
  budget (iterations, wall time, tokens) is spent, and never ends worse than EEVDF: the default is
  kept unless a verified candidate beat it by more than its spread *and* survived the stress run.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from aios.kernel.syscall import SyscallFailed
from aios.sched_ext.compose import (
    BLOCK_DOCS,
    SLICE_CHOICES_US,
    Composition,
    all_compositions,
    composition_from_choices,
    generate,
)
from aios.sched_ext.tools import digest
from aios.sdk.agent import Agent
from aios.sdk.calls import memory_add, storage_list, storage_put, storage_search, tool_call
from aios.sdk.runtime import chat

# ------------------------------------------------------------------------------------ goals

#: The optimization goals the planner chooses from (the words constrained decoding may produce),
#: mapped to the workload registry's ``Goal`` labels.
GOALS: dict[str, str] = {
    "minimize p99 wake-up latency": "min_p99_latency",
    "minimize makespan": "min_makespan",
    "minimize mean completion time": "min_mean_completion",
    "maximize throughput": "max_throughput",
}
GOAL_PHRASE = {v: k for k, v in GOALS.items()}
#: Metric-name fragments that serve each goal, in preference order.
_GOAL_FRAGMENTS: dict[str, tuple[str, ...]] = {
    "min_p99_latency": ("p99",),
    "min_makespan": ("makespan", "time_s", "elapsed"),
    "min_mean_completion": ("mean_completion", "mean_step", "avg"),
    "max_throughput": ("per_s", "ops_per_s", "time_s"),
}


def goal_metric(goal: str, workload: Any | None) -> tuple[str, bool]:
    """The metric a goal is judged by on ``workload`` (a registry ``Workload``) and whether higher is better.

    The workload's own primary metric when the goal is its labelled one; otherwise the first of
    its metrics that serves the goal; its primary metric as the last resort.
    """
    label = GOALS.get(goal, goal)
    if workload is None:
        default = {
            "min_p99_latency": "p99_wakeup_us",
            "min_makespan": "makespan_ms",
            "min_mean_completion": "mean_completion_ms",
            "max_throughput": "tasks_per_s",
        }[label]
        return default, label == "max_throughput"
    if str(workload.goal) == label:
        return workload.primary_metric, workload.primary.better == "higher"
    for frag in _GOAL_FRAGMENTS[label]:
        for m in workload.metrics:
            if frag in m.name:
                return m.name, m.better == "higher"
    return workload.primary_metric, workload.primary.better == "higher"


# ------------------------------------------------------------------------------------ requests


class Budget(BaseModel):
    """When the agent must stop: candidates evaluated, wall time, LLM tokens."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(5, ge=1, le=100, description="rounds; the opening screen of seeds is one")
    time_s: float = Field(3600.0, gt=0)
    tokens: int = Field(100_000, ge=1)


class OptimizeTask(BaseModel):
    """What the user asks the sched-agent for (the CLI builds one from its flags)."""

    model_config = ConfigDict(extra="forbid")

    workload: str = Field(min_length=1)
    goal: str | None = Field(None, description="the user's words; the goal is still inferred from them")
    mode: Literal["compose", "write"] = "compose"
    budget: Budget = Field(default_factory=Budget)
    reps: int = Field(3, ge=1, le=20, description="repetitions per measurement (EEVDF and candidate)")
    stress_s: float = Field(60.0, ge=0, description="stress run of the final candidate before acceptance")
    min_gain: float = Field(
        0.03, ge=0, description="gain over EEVDF a candidate must exceed at its 90% lower bound"
    )
    patience: int = Field(2, ge=1, description="stop after this many rounds without a better candidate")
    confirm_reps: int = Field(5, ge=2, le=20, description="repetitions of the confirmation boot")
    confirm: int = Field(
        3,
        ge=0,
        le=10,
        description="best candidates re-measured together before acceptance (0: take the loop's best as measured)",
    )
    seeds: int = Field(
        6,
        ge=0,
        le=20,
        description="repository schedulers screened together in the first round (two VM boots in all)",
    )
    deploy: bool = False
    profile_tier: str = "summary"
    deep_profile: bool = Field(
        True, description="after planning, take the deeper 'trace' tier when the goal is wake-up latency"
    )


class Verdict(BaseModel):
    ok: bool
    stage: str = ""
    reason: str = ""


class IterationRecord(BaseModel):
    """One candidate's journey: where it came from, the verifier's verdict, its measurement."""

    index: int
    name: str
    origin: Literal["repository", "tuned", "compose", "write"]
    detail: str = ""
    verdict: Verdict
    metric: str = ""
    baseline: float | None = None
    candidate: float | None = None
    improvement: float | None = Field(None, description="relative gain over EEVDF (0.2 = 20% better)")
    spread: float | None = Field(None, description="relative spread of the ratio over repetitions")
    ratios: list[float] = Field(
        default_factory=list, description="per-repetition ratio vs EEVDF (same boot, >1 = better)"
    )
    seconds: float = 0.0
    digest: str = ""


class Cost(BaseModel):
    wall_s: float = 0.0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    verify_runs: int = 0
    measure_runs: int = 0
    usd: float = Field(0.0, description="$0 with local models")


class OptimizeReport(BaseModel):
    workload: str
    goal: str
    metric: str
    higher_is_better: bool
    mode: str
    iterations: list[IterationRecord] = Field(default_factory=list)
    winner: str = "EEVDF"
    winner_source: str | None = None
    improvement: float = 0.0
    spread: float | None = None
    accepted: bool = False
    stress: dict[str, Any] | None = None
    confirmation: list[IterationRecord] = Field(
        default_factory=list, description="the best candidates re-measured together in one boot"
    )
    stress_failures: list[dict[str, Any]] = Field(
        default_factory=list,
        description="candidates that won on the metric but failed the stress run, and why",
    )
    stop_reason: str = ""
    deployed: dict[str, Any] | None = None
    cost: Cost = Field(default_factory=Cost)

    def table(self) -> str:
        """Per-iteration progress as a plain text table."""
        rows = [f"{'#':>2}  {'candidate':<32} {'origin':<10} {'verdict':<22} {self.metric + ' vs EEVDF':>26}"]
        for it in self.iterations:
            verdict = "ok" if it.verdict.ok else f"rejected@{it.verdict.stage}"
            if it.improvement is None:
                vs = "-"
            else:
                vs = f"{it.candidate:.4g} vs {it.baseline:.4g} ({it.improvement:+.1%})"
            rows.append(f"{it.index:>2}  {it.name[:32]:<32} {it.origin:<10} {verdict[:22]:<22} {vs:>26}")
        if self.confirmation:
            rows.append("confirmation (the best candidates measured again, together, in one boot):")
            for it in self.confirmation:
                vs = "-" if it.improvement is None else f"{it.improvement:+.1%}"
                rows.append(f"{it.index:>2}  {it.name[:32]:<32} {it.origin:<10} {'':<22} {vs:>26}")
        return "\n".join(rows)


# ------------------------------------------------------------------------------------ internals


@dataclass
class _Candidate:
    name: str
    origin: Literal["repository", "tuned", "compose", "write"]
    source: str
    detail: str = ""
    composition: Composition | None = None
    tunables: dict[str, int] = field(default_factory=dict)
    base: str = ""  # the repository scheduler it derives from


@dataclass
class _State:
    task: OptimizeTask
    goal: str = ""
    metric: str = ""
    higher: bool = False
    profile: dict[str, Any] = field(default_factory=dict)
    hits: list[dict[str, Any]] = field(default_factory=list)
    records: list[IterationRecord] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)
    best: IterationRecord | None = None
    cost: Cost = field(default_factory=Cost)
    started: float = field(default_factory=time.time)
    feedback: list[str] = field(default_factory=list)
    blocks: dict[str, dict[str, str]] = field(default_factory=dict)  # candidate -> its building blocks
    rounds: int = 0
    stale_rounds: int = 0  # rounds in a row that found nothing better than ``best``


_CODE_RE = re.compile(r"```(?:c|C|bpf)?\s*\n(.*?)```", re.S)
_TUNABLE_RE = re.compile(
    r"(const\s+volatile\s+[us](?:8|16|32|64)\s+(\w+)\s*=\s*)(\d+)(ULL|ull|UL|ul|U|u)?\s*;"
)


def extract_code(text: str) -> str:
    """The BPF C in a model's answer: the longest fenced block, else the text itself."""
    blocks = _CODE_RE.findall(text)
    if blocks:
        return max(blocks, key=len).strip() + "\n"
    return text.strip() + "\n"


def source_tunables(source: str) -> dict[str, int]:
    """``const volatile u64`` tunables declared in a scheduler's source, with their defaults."""
    return {m.group(2): int(m.group(3)) for m in _TUNABLE_RE.finditer(source)}


def set_tunables(source: str, values: dict[str, int]) -> str:
    """Rewrite tunables' initial values in the source (a new program, verified like any other)."""

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name in values:
            return f"{m.group(1)}{int(values[name])}ULL;"
        return m.group(0)

    return _TUNABLE_RE.sub(sub, source)


def _fmt_profile(profile: dict[str, Any], limit: int = 900) -> str:
    text = profile.get("text") or json.dumps(profile.get("summary", profile), sort_keys=True, default=str)
    return text[:limit]


# ------------------------------------------------------------------------------------ the agent


class SchedAgent(Agent):
    """SchedCP's sched-agent on aios: ``run(OptimizeTask) -> OptimizeReport`` (as a dict)."""

    description: ClassVar[str] = (
        "observes a workload and synthesizes, verifies and measures sched_ext schedulers"
    )
    group: ClassVar[str] = "admin"

    def __init__(self, name: str = "sched-agent", progress: Callable[[str], None] | None = None):
        super().__init__(name)
        self.progress = progress or (lambda _line: None)

    # -- syscalls ---------------------------------------------------------------------------------
    def _tool(self, st: _State, tool: str, /, **arguments: Any) -> Any:
        return tool_call(tool, arguments, timeout=3600.0)["result"]

    def _tool_or_error(self, st: _State, tool: str, /, **arguments: Any) -> dict[str, Any]:
        """A tool call whose failure is a result for the loop to learn from, not a crash."""
        try:
            return self._tool(st, tool, **arguments)
        except SyscallFailed as exc:
            err = exc.error
            return {
                "ok": False,
                "stage": tool,
                "reason": f"{err.type}: {err.message}"[:2000],
                "error": f"{err.type}: {err.message}"[:2000],
            }

    def _llm(self, st: _State, prompt: str | list[dict[str, str]], **request: Any) -> str:
        res = chat([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt, **request)
        st.cost.llm_calls += 1
        st.cost.prompt_tokens += res.response.prompt_tokens
        st.cost.completion_tokens += res.response.completion_tokens
        return res.text

    def _memory_add(self, content: str, **metadata: Any) -> None:
        memory_add(
            content, {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in metadata.items()}
        )

    def _storage_put(self, key: str, content: str, **metadata: Any) -> None:
        meta = {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in metadata.items()}
        storage_put(key, content, meta)

    def _tokens(self, st: _State) -> int:
        return st.cost.prompt_tokens + st.cost.completion_tokens

    # -- observation ----------------------------------------------------------------------------------
    def observe(self, st: _State) -> None:
        st.profile = self._tool(st, "sched_profile", workload=st.task.workload, tier=st.task.profile_tier)
        self._memory_add(
            f"profile of {st.task.workload} ({st.task.profile_tier}): {_fmt_profile(st.profile)}",
            kind="profile",
            workload=st.task.workload,
        )
        self.progress(f"observe: {st.task.workload} profiled ({st.task.profile_tier} tier)")

    def observe_deeper(self, st: _State) -> None:
        """The trace tier (time series + a wake-up latency probe), only when the plan needs it.

        Only a latency goal needs it: the summary tier already shows the task-length shape that
        batch goals depend on, and every boot costs tens of seconds under TCG.
        """
        if not st.task.deep_profile or st.task.profile_tier == "trace" or "latency" not in st.goal:
            return
        try:
            deep = self._tool(st, "sched_profile", workload=st.task.workload, tier="trace")
        except SyscallFailed as exc:
            self.progress(f"observe: trace tier failed ({exc.error.message[:80]}); keeping the summary")
            return
        st.profile = {**st.profile, "text": deep.get("text") or st.profile.get("text", ""), "trace": True}
        self._memory_add(
            f"trace profile of {st.task.workload}: {_fmt_profile(deep)}",
            kind="profile",
            workload=st.task.workload,
        )
        self.progress(f"observe: {st.task.workload} profiled again (trace tier: latency goal)")

    # -- planning -------------------------------------------------------------------------------------
    def infer_goal(self, st: _State) -> str:
        """The LLM picks one goal from ``GOALS`` (constrained decoding: always a valid answer).

        Its worked examples are the ones nearest the user's words in storage; a goal the user named
        outright becomes a new example (learning what their words mean).
        """
        st.goal = infer_goal(
            lambda prompt, choices: self._llm(st, prompt, choices=choices, max_new_tokens=16),
            st.task.workload,
            st.task.goal,
            st.profile,
            examples=goal_examples,
        )
        if st.task.goal and explicit_goal(st.task.goal) == st.goal:
            remember_goal_example(st.task.goal, st.goal)
        st.metric, st.higher = goal_metric(st.goal, _workload(st.task.workload))
        self._memory_add(f"goal for {st.task.workload}: {st.goal} (metric {st.metric})", kind="goal")
        self.progress(
            f"plan: goal = {st.goal} (metric {st.metric}, {'higher' if st.higher else 'lower'} is better)"
        )
        return st.goal

    def _feedback_text(self, st: _State, limit: int = 6) -> str:
        if not st.feedback:
            return "No candidates tried yet."
        return "\n".join(st.feedback[-limit:])

    def _tune(self, st: _State) -> _Candidate | None:
        """The best measured scheduler with one of its time tunables (``*_ns``) halved or doubled.

        The LLM picks the change from a menu of untried ones, with the results so far in context.
        """
        if st.best is None or st.best.name not in st.sources:
            return None
        base, base_src = st.best.name, st.sources[st.best.name]
        tun = {k: v for k, v in source_tunables(base_src).items() if k.endswith("_ns") and v > 0}
        options: dict[str, tuple[str, float]] = {}
        for knob in tun:
            for verb, factor in (("halve", 0.5), ("double", 2.0)):
                if f"{base}+{knob}x{factor}" not in st.tried:
                    options[f"{verb} {knob}"] = (knob, factor)
        if not options:
            return None
        current = ", ".join(f"{k}={v}" for k, v in tun.items())
        prompt = (
            f"Goal: {st.goal}. The best scheduler so far is {base} "
            f"({st.best.improvement or 0:+.1%} vs EEVDF) with {current}.\n"
            f"Results so far:\n{self._feedback_text(st)}\nWhich change should be measured next?"
        )
        choice = self._llm(st, prompt, choices=list(options), max_new_tokens=16).strip()
        knob, factor = options.get(choice, next(iter(options.values())))
        new = {knob: max(100_000, int(tun[knob] * factor))}
        return _Candidate(
            name=f"{base}+{knob}x{factor}",
            origin="tuned",
            source=set_tunables(base_src, new),
            detail=f"{knob}={new[knob]}",
            tunables=new,
            base=base.split("+", 1)[0],
        )

    def _compose(self, st: _State) -> _Candidate | None:
        """Building blocks chosen field by field, each a constrained choice among untried combos."""
        untried = [c for c in all_compositions() if c.name not in st.tried]
        if not untried:
            return None
        chosen: dict[str, str] = {}
        for fld, docs in BLOCK_DOCS.items():
            prior = self._option_prior(st, fld)
            options = sorted(
                {str(c.model_dump(mode="json")[fld]) for c in untried if _matches(c, chosen)},
                key=lambda o: (-prior.get(o, 0.0), list(docs).index(o)),
            )
            if len(options) == 1:
                chosen[fld] = options[0]
                continue
            menu = "\n".join(
                f"- {o}: {docs[o]}" + (f" [measured: {prior[o]:+.0%}]" if o in prior else "") for o in options
            )
            prompt = (
                f"You design a Linux CPU scheduler. Goal: {st.goal} (metric {st.metric}) for workload "
                f"{st.task.workload}.\nProfile: {_fmt_profile(st.profile, 400)}\n"
                f"Results so far:\n{self._feedback_text(st)}\n"
                f"Chosen so far: {json.dumps(chosen) if chosen else 'nothing'}\n"
                f"Choose the {fld.replace('_', ' ')} (options listed best-first by the results so far):\n"
                f"{menu}\nAnswer with one option name."
            )
            pick = self._llm(st, prompt, choices=options, max_new_tokens=16).strip()
            chosen[fld] = pick if pick in options else options[0]
        comp = composition_from_choices(chosen)
        gen = generate(comp)
        return _Candidate(
            name=gen.name, origin="compose", source=gen.source, detail=json.dumps(chosen), composition=comp
        )

    def _option_prior(self, st: _State, fld: str) -> dict[str, float]:
        """Per option of one building block, the best improvement measured with it so far.

        Learning across rounds: the blocks of every measured candidate (seeds declare theirs,
        compositions are made of them) carry its result, so the menu the model chooses from next
        lists the options that have worked first.
        """
        prior: dict[str, float] = {}
        for rec in st.records:
            b = st.blocks.get(rec.name)
            if not b or fld not in b or rec.improvement is None:
                continue
            opt = str(b[fld])
            prior[opt] = max(prior.get(opt, -1e9), rec.improvement)
        return prior

    def _write(self, st: _State, max_repairs: int = 3) -> _Candidate | None:
        """Write mode: the model writes BPF C with the closest programs and verifier feedback in context.

        Repairs (compile + static/kernel verification only) until the program verifies or the
        repair budget ends; the full verification and measurement then happen in ``execute``.
        """
        examples = "\n\n".join(
            f"/* {h['name']}: {h.get('description', '')[:200]} */\n{h['source'][:3000]}"
            for h in st.hits[:2]
            if h.get("source")
        )
        n = len([r for r in st.records if r.origin == "write"]) + 1
        name = f"wr{n}"
        prompt = (
            'Write a complete Linux sched_ext scheduler in BPF C. Include "aios_scx.h", use '
            "BPF_STRUCT_OPS / BPF_STRUCT_OPS_SLEEPABLE, scx_bpf_dsq_insert(_vtime), "
            'scx_bpf_dsq_move_to_local, a SEC(".struct_ops.link") struct sched_ext_ops with .name = '
            f'"{name}". Decide only from runtime, wake-ups and weights, never process names.\n'
            f"Goal: {st.goal} (metric {st.metric}) for workload {st.task.workload}.\n"
            f"Profile: {_fmt_profile(st.profile, 400)}\nResults so far:\n{self._feedback_text(st)}\n"
            f"Closest repository programs:\n{examples}\nAnswer with one ```c block."
        )
        messages = [{"role": "user", "content": prompt}]
        source = ""
        for attempt in range(max_repairs + 1):
            if self._out_of_budget(st):
                break
            res = chat(messages, max_new_tokens=2048)
            st.cost.llm_calls += 1
            st.cost.prompt_tokens += res.response.prompt_tokens
            st.cost.completion_tokens += res.response.completion_tokens
            source = extract_code(res.text)
            verdict = self._verify(st, source, stages="static")
            if verdict.ok:
                return _Candidate(name=name, origin="write", source=source, detail=f"repairs={attempt}")
            self.progress(
                f"  write: attempt {attempt + 1} rejected at {verdict.stage}: {verdict.reason[:120]}"
            )
            messages += [
                {"role": "assistant", "content": res.text},
                {
                    "role": "user",
                    "content": f"The verifier rejected it at stage {verdict.stage}:\n{verdict.reason[:1500]}\n"
                    "Fix the program. Answer with the whole corrected program in one ```c block.",
                },
            ]
        return _Candidate(name=name, origin="write", source=source, detail="unrepaired") if source else None

    def plan(self, st: _State) -> _Candidate | None:
        """After the screen: new schedulers, and every third round a tuning of the best so far."""
        if st.task.mode == "write":
            return self._write(st)
        if st.best is not None and (st.best.improvement or 0) > 0 and st.rounds % 3 == 0:
            cand = self._tune(st)
            if cand is not None:
                return cand
        return self._compose(st)

    # -- execution ------------------------------------------------------------------------------------
    def _verify(self, st: _State, source: str, stages: str = "all") -> Verdict:
        st.cost.verify_runs += 1
        out = self._tool_or_error(st, "sched_verify", source=source, stages=stages)
        return Verdict(ok=bool(out["ok"]), stage=out.get("stage", ""), reason=out.get("reason", ""))

    def screen(self, st: _State) -> list[tuple[_Candidate, IterationRecord]]:
        """Round one: the repository's closest schedulers, verified together and measured together.

        Every seed is measured against EEVDF in the same boot, so the loop starts from the best of
        them (and never ends below it) instead of guessing which one to try first.
        """
        cands = [
            _Candidate(name=h["name"], origin="repository", source=h["source"], detail="seed", base=h["name"])
            for h in st.hits[: st.task.seeds]
            if h.get("source") and h["name"] not in st.tried
        ]
        if not cands:
            return []
        st.cost.verify_runs += 1
        return self._measure_together(st, cands, st.task.reps)

    def _measure_together(
        self, st: _State, cands: list[_Candidate], reps: int
    ) -> list[tuple[_Candidate, IterationRecord]]:
        """``sched_screen``: verify the unverified ones in one boot, measure all in another."""
        t0 = time.time()
        st.cost.measure_runs += 1
        try:
            outs = self._tool(
                st,
                "sched_screen",
                sources=[c.source for c in cands],
                workload=st.task.workload,
                reps=reps,
            )
        except SyscallFailed as exc:  # the round is lost, not the run: every seed records why
            bad = {"ok": False, "stage": "tool", "reason": f"{exc.error.type}: {exc.error.message}"[:2000]}
            outs = [{"verdict": bad, "measurement": None}] * len(cands)
        done = []
        for cand, out in zip(cands, outs, strict=True):
            v = out["verdict"]
            rec = IterationRecord(
                index=len(st.records) + len(done) + 1,
                name=cand.name,
                origin=cand.origin,
                detail=cand.detail,
                verdict=Verdict(ok=bool(v["ok"]), stage=v.get("stage", ""), reason=v.get("reason", "")),
                metric=st.metric,
            )
            self._score(st, rec, out.get("measurement"))
            rec.seconds = (time.time() - t0) / len(cands)
            rec.digest = digest(cand.source)
            done.append((cand, rec))
        return done

    def confirm(self, st: _State) -> list[IterationRecord]:
        """The best few candidates (and the best seed) measured again, together, in one fresh boot.

        Why: the loop's best is the maximum of many noisy measurements, each against its own boot's
        EEVDF, so it is biased upwards (the winner's curse: under TCG one program's ratio moves by
        tens of percent between boots). Measuring the contenders side by side with more repetitions
        gives an unbiased comparison between them and an honest gain over EEVDF. The best repository
        scheduler always takes part, so a new one wins only by beating it side by side.
        """
        ranked = sorted(
            (r for r in st.records if r.verdict.ok and (r.improvement or 0.0) > 0),
            key=lambda r: -(r.improvement or 0.0),
        )
        top: list[IterationRecord] = []
        for r in ranked:
            if all(r.digest != t.digest for t in top):
                top.append(r)
        top = top[: st.task.confirm]
        best_seed = next((r for r in ranked if r.origin == "repository"), None)
        if best_seed is not None and all(best_seed.digest != t.digest for t in top):
            top.append(best_seed)
        if not top:
            return []
        reps = st.task.confirm_reps
        self.progress(f"confirm: {', '.join(r.name for r in top)} measured together ({reps} reps)")
        cands = [
            _Candidate(name=r.name, origin=r.origin, source=st.sources[r.name], detail="confirmation")
            for r in top
        ]
        out = []
        for (cand, rec), first in zip(self._measure_together(st, cands, reps), top, strict=True):
            rec.index = first.index
            out.append(rec)
            self._report_progress(st, cand, rec, prefix="confirm")
        return out

    def _score(self, st: _State, rec: IterationRecord, m: dict[str, Any] | None) -> None:
        """Fill ``rec`` from a measurement summary (the goal's metric, candidate vs EEVDF)."""
        if not rec.verdict.ok or m is None:
            return
        if not m.get("ok"):
            rec.verdict = Verdict(ok=False, stage="measure", reason=m.get("error", "measurement failed"))
            return
        base, value = m["baseline"].get(st.metric), m["candidate"].get(st.metric)
        if base is not None and value is not None and base > 0 and value > 0:
            rec.baseline, rec.candidate = float(base), float(value)
            ratio = value / base if st.higher else base / value
            rec.improvement = ratio - 1.0
            rec.spread = (m.get("spread") or {}).get(st.metric)
            rec.ratios = [float(x) for x in (m.get("paired") or {}).get(st.metric, []) if x == x and x > 0]

    def execute(self, st: _State, cand: _Candidate, index: int) -> IterationRecord:
        t0 = time.time()
        verdict = self._verify(st, cand.source)
        rec = IterationRecord(
            index=index,
            name=cand.name,
            origin=cand.origin,
            detail=cand.detail,
            verdict=verdict,
            metric=st.metric,
        )
        if verdict.ok:
            st.cost.measure_runs += 1
            m = self._tool(
                st, "sched_measure", source=cand.source, workload=st.task.workload, reps=st.task.reps
            )
            self._score(st, rec, m)
        rec.seconds = time.time() - t0
        rec.digest = digest(cand.source)
        return rec

    # -- learning -------------------------------------------------------------------------------------
    def learn(self, st: _State, cand: _Candidate, rec: IterationRecord) -> None:
        st.records.append(rec)
        st.tried.add(cand.name)
        st.sources[cand.name] = cand.source
        st.blocks[cand.name] = _blocks_of(st, cand)
        if rec.verdict.ok and rec.improvement is not None:
            line = f"- {cand.name} ({cand.origin} {cand.detail[:80]}): {st.metric} {rec.candidate:.4g} vs EEVDF {rec.baseline:.4g} ({rec.improvement:+.1%})"
            if st.best is None or rec.improvement > (st.best.improvement or -1e9):
                st.best = rec
        elif rec.verdict.ok:
            line = f"- {cand.name} ({cand.origin}): verified, but the workload did not report {st.metric}"
        else:
            line = (
                f"- {cand.name} ({cand.origin}): rejected at {rec.verdict.stage}: {rec.verdict.reason[:200]}"
            )
        st.feedback.append(line)
        self._memory_add(line, kind="result", workload=st.task.workload)
        self._storage_put(
            f"sched/{st.task.workload}/{rec.index:03d}-{cand.name}",
            json.dumps({"record": rec.model_dump(), "source": cand.source}),
            workload=st.task.workload,
            candidate=cand.name,
            ok=rec.verdict.ok,
        )
        try:
            self._tool(
                st,
                "sched_record",
                name=cand.name,
                source=cand.source,
                description=f"{cand.origin} candidate for {st.goal}: {cand.detail[:300]}",
                workload=st.task.workload,
                result=rec.model_dump(),
            )
        except Exception as exc:  # recording is best effort: the loop's own storage has it
            self.progress(f"  (repository record failed: {exc})")

    def _out_of_budget(self, st: _State) -> str:
        b = st.task.budget
        if time.time() - st.started > b.time_s:
            return "time budget spent"
        if self._tokens(st) > b.tokens:
            return "token budget spent"
        return ""

    def _flattened(self, st: _State) -> bool:
        """No better candidate in the last ``patience`` rounds."""
        return st.best is not None and st.stale_rounds >= st.task.patience

    # -- the whole run --------------------------------------------------------------------------------
    def run(self, task: Any) -> dict[str, Any]:
        task = task if isinstance(task, OptimizeTask) else OptimizeTask.model_validate(task)
        st = _State(task=task)
        self.observe(st)
        self.infer_goal(st)
        self.observe_deeper(st)
        st.hits = self._tool(
            st, "sched_search", query=f"{st.goal}. {_fmt_profile(st.profile, 300)}", k=max(4, task.seeds)
        )
        stop = ""
        while True:
            stop = self._out_of_budget(st)
            if stop:
                break
            if st.rounds >= task.budget.iterations:
                stop = "iteration budget spent"
                break
            best_before = st.best
            if st.rounds == 0 and task.seeds > 0:
                done = self.screen(st)
            else:
                cand = self.plan(st)
                if cand is None:
                    stop = "no untried candidates"
                    break
                done = [(cand, self.execute(st, cand, len(st.records) + 1))]
            st.rounds += 1
            for cand, rec in done:
                self.learn(st, cand, rec)
                self._report_progress(st, cand, rec)
            st.stale_rounds = 0 if st.best is not best_before else st.stale_rounds + 1
            if self._flattened(st):
                stop = "gains flattened"
                break
        report = self.finish(st, stop)
        return report.model_dump()

    def _report_progress(self, st: _State, cand: _Candidate, rec: IterationRecord, prefix: str = "") -> None:
        verdict = "ok" if rec.verdict.ok else f"rejected@{rec.verdict.stage}: {rec.verdict.reason[:80]}"
        vs = (
            ""
            if rec.improvement is None
            else f" {st.metric} {rec.candidate:.4g} vs EEVDF {rec.baseline:.4g} ({rec.improvement:+.1%})"
        )
        self.progress(f"{prefix or 'iter'} {rec.index}: {cand.name} [{cand.origin}] {verdict}{vs}")

    def finish(self, st: _State, stop: str) -> OptimizeReport:
        """Accept the best candidate only if it beat EEVDF with confidence (``confident_gain`` over
        the confirmation boot's repetitions, when there is one) and survives the stress run."""
        report = OptimizeReport(
            workload=st.task.workload,
            goal=st.goal,
            metric=st.metric,
            higher_is_better=st.higher,
            mode=st.task.mode,
            iterations=st.records,
            stop_reason=stop,
        )
        if st.task.confirm > 0 and not self._out_of_budget(st):
            report.confirmation = self.confirm(st)
            measured = [r for r in report.confirmation if r.improvement is not None]
            contenders = sorted(measured, key=lambda r: -(r.improvement or 0.0))
        else:
            contenders = [st.best] if st.best is not None else []
        # best first: the first that beats EEVDF beyond its spread and survives the stress run wins;
        # one that fails the stress run hands over to the next (at most ``confirm`` tries)
        for best in contenders[: max(1, st.task.confirm)]:
            sure = confident_gain(best)
            if sure <= st.task.min_gain:
                self.progress(
                    f"no candidate beat EEVDF with confidence: {best.name} {best.improvement or 0:+.1%}, "
                    f"lower bound {sure:+.1%} <= {st.task.min_gain:.0%}; keeping EEVDF"
                )
                break
            self.progress(f"validate: {best.name} under a {st.task.stress_s:.0f} s stress mix")
            stress = self._tool_or_error(
                st, "sched_stress", source=st.sources[best.name], seconds=st.task.stress_s
            )
            st.cost.verify_runs += 1
            report.stress = stress
            if stress.get("ok"):
                report.winner, report.winner_source = best.name, st.sources[best.name]
                report.improvement, report.spread, report.accepted = (
                    best.improvement or 0.0,
                    best.spread,
                    True,
                )
                break
            reason = str(stress.get("reason", ""))
            report.stress_failures.append({"name": best.name, "reason": reason})
            line = f"- {best.name}: failed the {st.task.stress_s:.0f} s stress run: {reason[:200]}"
            st.feedback.append(line)
            self._memory_add(line, kind="result", workload=st.task.workload)
            self.progress(f"validate: {best.name} failed the stress run ({reason}); trying the next")
        if not report.accepted and report.stress_failures:
            self.progress("every contender that beat EEVDF failed the stress run; keeping EEVDF")
        if report.accepted and st.task.deploy:
            report.deployed = self._tool_or_error(st, "sched_deploy", source=report.winner_source)
        st.cost.wall_s = time.time() - st.started
        report.cost = st.cost
        self._storage_put(
            f"sched/{st.task.workload}/report",
            json.dumps(report.model_dump(exclude={"winner_source"})),
            workload=st.task.workload,
            winner=report.winner,
        )
        return report


#: One-sided 90% Student t quantiles by degrees of freedom (the last one for every larger count).
_T90 = (3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372)


def confident_gain(rec: IterationRecord) -> float:
    """A one-sided 90% lower bound of ``rec``'s gain over EEVDF, from its per-repetition ratios.

    Ratios are compared on a log scale (a 2x win and a 2x loss cancel out), and the bound is the
    Student t bound on their mean, so three noisy repetitions must agree more than seven do. With
    one repetition there is no spread to go by: the measured gain itself.
    """
    r = [x for x in rec.ratios if x > 0]
    if len(r) < 2:
        return rec.improvement if rec.improvement is not None else float("-inf")
    logs = [math.log(x) for x in r]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    t = _T90[min(len(logs) - 2, len(_T90) - 1)]
    return math.exp(mean - t * sd / math.sqrt(len(logs))) - 1.0


def _blocks_of(st: _State, cand: _Candidate) -> dict[str, str]:
    """A candidate's building blocks: its composition, or the blocks its repository entry declares."""
    if cand.composition is not None:
        return {k: str(v) for k, v in cand.composition.model_dump(mode="json").items()}
    base = cand.base or cand.name.split("+", 1)[0]
    hit = next((h for h in st.hits if h.get("name") == base), None)
    blocks = {k: str(v) for k, v in ((hit or {}).get("blocks") or {}).items()}
    if not blocks and base in st.blocks:
        blocks = dict(st.blocks[base])
    slice_ns = source_tunables(cand.source).get("slice_ns")
    if slice_ns:
        blocks["slice_us"] = str(min(SLICE_CHOICES_US, key=lambda us: abs(us * 1000 - slice_ns)))
    return blocks


def _workload(name: str) -> Any | None:
    """The registry entry for ``name`` (None for a workload the registry does not know)."""
    from aios.sched_ext.workloads import WORKLOADS

    return WORKLOADS.get(name)


def _matches(c: Composition, chosen: dict[str, str]) -> bool:
    d = c.model_dump(mode="json")
    return all(str(d[k]) == v for k, v in chosen.items())


#: Short labels the model answers with (distinct first tokens), mapped to ``GOALS`` phrases.


GOAL_LABELS: dict[str, str] = {
    "makespan": "minimize makespan",
    "mean completion time": "minimize mean completion time",
    "throughput": "maximize throughput",
    "p99 latency": "minimize p99 wake-up latency",
}
#: Worked examples for the goal prompt, six per goal, each from another domain than the evaluation
#: workloads (none of them is one). A small model follows examples far better than instructions,
#: and it follows the *closest* examples best: the planner retrieves the few nearest to the user's
#: words from storage (``goal_examples``) instead of showing one fixed list.
GOAL_EXAMPLES: list[tuple[str, str]] = [
    # makespan: the result is usable only when the whole set is done
    (
        "Render 30 video segments (one is much longer); the film is published only after every segment is rendered.",
        "makespan",
    ),
    (
        "Run 50 test files (one is slow); the release is tagged only when all test files have passed.",
        "makespan",
    ),
    (
        "Train 12 model shards in parallel; the ensemble can be evaluated only once every shard has finished.",
        "makespan",
    ),
    (
        "Convert 80 map tiles (a few are large) into one atlas that is written after the last tile is converted.",
        "makespan",
    ),
    (
        "Back up 20 databases (one is huge); the nightly backup counts as done when the last database is copied.",
        "makespan",
    ),
    (
        "Generate 64 report sections in parallel, then a final step that concatenates all of them into the report.",
        "makespan",
    ),
    # mean completion: each job's result is useful on its own, as soon as it is done
    (
        "Resize 60 user photos (one is huge); each user sees their own photo as soon as it is resized.",
        "mean completion time",
    ),
    (
        "Transcode 25 uploaded clips; every uploader is notified the moment their own clip is done.",
        "mean completion time",
    ),
    (
        "Answer 30 independent search queries (one is expensive); each reply is sent to its caller when ready.",
        "mean completion time",
    ),
    (
        "Scan 45 uploaded attachments for viruses; each attachment is delivered as soon as its own scan is clean.",
        "mean completion time",
    ),
    (
        "Build 20 separate preview thumbnails for a gallery; each thumbnail appears on the page as soon as it exists.",
        "mean completion time",
    ),
    (
        "Grade 100 student submissions (one is big); each student gets their own grade the moment it is ready.",
        "mean completion time",
    ),
    # throughput: a continuous stream, rated in items per unit time
    (
        "Stream records through filter and encode stages; the score is records handled per second.",
        "throughput",
    ),
    (
        "A message broker moves events from producers to consumers; it is rated in events per second.",
        "throughput",
    ),
    (
        "A chain of worker processes passes packets along pipes; what counts is packets processed per second.",
        "throughput",
    ),
    (
        "An ingest service parses a never-ending feed of log lines; its capacity is lines parsed per second.",
        "throughput",
    ),
    ("A video pipeline decodes, filters and encodes frames; the target is frames per second.", "throughput"),
    (
        "Hash a queue of incoming blocks as fast as possible; the operator watches blocks hashed per minute.",
        "throughput",
    ),
    # p99 latency: something wakes often and must run at once
    (
        "A web server's message threads wake worker threads for each request; users notice slow replies.",
        "p99 latency",
    ),
    ("A game loop wakes 8 threads every frame; a thread that wakes late drops a frame.", "p99 latency"),
    ("An audio callback runs every 2 ms; a late wake-up is an audible glitch.", "p99 latency"),
    (
        "A trading gateway wakes a handler for each market tick; the slowest 1% of reactions loses money.",
        "p99 latency",
    ),
    (
        "A key-value cache answers small requests from many clients; the tail of response times matters most.",
        "p99 latency",
    ),
    (
        "A robot controller thread sleeps and wakes on a 1 ms timer; missing a deadline makes the arm jerk.",
        "p99 latency",
    ),
]
#: Storage keys of the worked examples (the seeds, then goals users named outright).
GOAL_EXAMPLE_PREFIX = "goal-examples/"


def goal_examples(request: str, k: int = 4) -> list[tuple[str, str]]:
    """The ``k`` worked examples closest in meaning to ``request``, most similar last.

    Retrieval-chosen few-shot prompting, through storage syscalls: the examples live in the calling
    agent's storage (seeded with ``GOAL_EXAMPLES`` on first use, then grown by
    ``remember_goal_example``), and the vector DB picks the nearest. Most similar last because a
    small model leans towards the example it read most recently.
    """
    have = {i["key"] for i in storage_list(GOAL_EXAMPLE_PREFIX, limit=10_000)}
    for i, (text, label) in enumerate(GOAL_EXAMPLES):
        key = f"{GOAL_EXAMPLE_PREFIX}seed-{i:02d}"
        if key not in have:
            storage_put(key, text, {"goal": label, "source": "seed"})
    hits = storage_search(request, k=k, prefix=GOAL_EXAMPLE_PREFIX)
    return [
        (h["content"], h["metadata"]["goal"])
        for h in reversed(hits)
        if h["metadata"].get("goal") in GOAL_LABELS
    ]


def remember_goal_example(request: str, goal: str) -> None:
    """Keep a request whose goal the user named outright as a worked example for later inference."""
    label = next((lbl for lbl, phrase in GOAL_LABELS.items() if phrase == goal), None)
    if label is None or not request.strip():
        return
    key = f"{GOAL_EXAMPLE_PREFIX}user-{digest(request)}"
    storage_put(key, request, {"goal": label, "source": "user"})


#: Words by which a user names a goal outright (then no inference is needed).
_EXPLICIT: list[tuple[tuple[str, ...], str]] = [
    (("p99", "tail latency", "wake-up latency", "wakeup latency", "latency"), "minimize p99 wake-up latency"),
    (("makespan", "last job", "whole batch", "all jobs finish", "all of them finish"), "minimize makespan"),
    (
        ("mean completion", "average completion", "average job", "mean job", "each job finish"),
        "minimize mean completion time",
    ),
    (("throughput", "per second", "requests/s", "ops/s"), "maximize throughput"),
]


def explicit_goal(user_goal: str | None) -> str | None:
    """The goal the user named outright (``--goal "lower p99 latency"``), else None."""
    low = (user_goal or "").lower()
    for words, goal in _EXPLICIT:
        if any(w in low for w in words):
            return goal
    return None


#: What the goal prompt asks, as its system message.
GOAL_INSTRUCTION = "For each workload, name what its user waits for: makespan, mean completion time, throughput or p99 latency."


def goal_messages(
    request: str, profile_text: str = "", examples: list[tuple[str, str]] | None = None
) -> list[dict[str, str]]:
    """The few-shot goal prompt as a chat: each worked example is a user turn (the workload) and an
    assistant turn (its goal), then the user's request with the observed profile.

    A chat model was tuned on turns, so it copies an answer pattern from earlier assistant turns
    more faithfully than from a transcript pasted into one message. Without ``examples``: one
    example per goal (showing all of them drowns a small model: measured 0/8 with SmolLM2).
    """
    msgs = [{"role": "system", "content": GOAL_INSTRUCTION}]
    for text, label in examples if examples is not None else GOAL_EXAMPLES[::6]:
        msgs += [{"role": "user", "content": f"Workload: {text}"}, {"role": "assistant", "content": label}]
    observed = f" Observed: {profile_text}" if profile_text else ""
    msgs.append({"role": "user", "content": f"Workload: {request}{observed}"})
    return msgs


def infer_goal(
    ask: Callable[[list[dict[str, str]], list[str]], str],
    workload: str,
    user_goal: str | None,
    profile: dict[str, Any],
    examples: Callable[[str], list[tuple[str, str]]] | None = None,
) -> str:
    """One goal of ``GOALS`` from the user's words and the profile.

    A goal the user named outright is taken as said.  Otherwise the model is asked —
    ``ask(messages, choices)`` is an LLM call constrained to ``choices``, so the answer is always a
    valid label; an unconstrained model's free text is mapped to the first label it mentions.
    ``examples(request)`` picks the worked examples for the prompt (``goal_examples`` retrieves
    the nearest from storage); without it the prompt shows one example per goal.
    """
    named = explicit_goal(user_goal)
    if named is not None:
        return named
    wl = _workload(workload)
    request = user_goal or profile.get("description") or (wl.description if wl is not None else workload)
    shape = _fmt_profile(profile, 240) if profile.get("text") else ""
    shots = examples(request) if examples is not None else None
    answer = ask(goal_messages(request, shape, shots), list(GOAL_LABELS)).strip()
    if answer in GOAL_LABELS:
        return GOAL_LABELS[answer]
    low = answer.lower()
    for label, goal in GOAL_LABELS.items():
        if label in low or goal in low:
            return goal
    return GOAL_LABELS["makespan"]
