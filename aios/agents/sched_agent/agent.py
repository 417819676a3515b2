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
import time
from collections.abc import Callable
from typing import Any, ClassVar

from aios.agents.sched_agent.goal_inference import goal_examples, infer_goal, remember_goal_example
from aios.agents.sched_agent.goals import explicit_goal, goal_metric, profile_text, registry_workload
from aios.agents.sched_agent.report import IterationRecord, OptimizeReport, Verdict
from aios.agents.sched_agent.source import extract_code, set_tunables, source_tunables
from aios.agents.sched_agent.state import Candidate, LoopState, blocks_of, composition_matches
from aios.agents.sched_agent.stats import confident_gain
from aios.agents.sched_agent.task import OptimizeTask
from aios.kernel.syscall import SyscallFailed
from aios.sched_ext.compose import BLOCK_DOCS, all_compositions, composition_from_choices, generate
from aios.sched_ext.tools import digest
from aios.sdk.agent import Agent
from aios.sdk.calls import memory_add, storage_put, tool_call
from aios.sdk.runtime import chat

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
    def _tool(self, st: LoopState, tool: str, /, **arguments: Any) -> Any:
        return tool_call(tool, arguments, timeout=3600.0)["result"]

    def _tool_or_error(self, st: LoopState, tool: str, /, **arguments: Any) -> dict[str, Any]:
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

    def _llm(self, st: LoopState, prompt: str | list[dict[str, str]], **request: Any) -> str:
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

    def _tokens(self, st: LoopState) -> int:
        return st.cost.prompt_tokens + st.cost.completion_tokens

    # -- observation ----------------------------------------------------------------------------------
    def observe(self, st: LoopState) -> None:
        st.profile = self._tool(st, "sched_profile", workload=st.task.workload, tier=st.task.profile_tier)
        self._memory_add(
            f"profile of {st.task.workload} ({st.task.profile_tier}): {profile_text(st.profile)}",
            kind="profile",
            workload=st.task.workload,
        )
        self.progress(f"observe: {st.task.workload} profiled ({st.task.profile_tier} tier)")

    def observe_deeper(self, st: LoopState) -> None:
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
            f"trace profile of {st.task.workload}: {profile_text(deep)}",
            kind="profile",
            workload=st.task.workload,
        )
        self.progress(f"observe: {st.task.workload} profiled again (trace tier: latency goal)")

    # -- planning -------------------------------------------------------------------------------------
    def infer_goal(self, st: LoopState) -> str:
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
        st.metric, st.higher = goal_metric(st.goal, registry_workload(st.task.workload))
        self._memory_add(f"goal for {st.task.workload}: {st.goal} (metric {st.metric})", kind="goal")
        self.progress(
            f"plan: goal = {st.goal} (metric {st.metric}, {'higher' if st.higher else 'lower'} is better)"
        )
        return st.goal

    def _feedback_text(self, st: LoopState, limit: int = 6) -> str:
        if not st.feedback:
            return "No candidates tried yet."
        return "\n".join(st.feedback[-limit:])

    def _tune(self, st: LoopState) -> Candidate | None:
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
        return Candidate(
            name=f"{base}+{knob}x{factor}",
            origin="tuned",
            source=set_tunables(base_src, new),
            detail=f"{knob}={new[knob]}",
            tunables=new,
            base=base.split("+", 1)[0],
        )

    def _compose(self, st: LoopState) -> Candidate | None:
        """Building blocks chosen field by field, each a constrained choice among untried combos."""
        untried = [c for c in all_compositions() if c.name not in st.tried]
        if not untried:
            return None
        chosen: dict[str, str] = {}
        for fld, docs in BLOCK_DOCS.items():
            prior = self._option_prior(st, fld)
            options = sorted(
                {str(c.model_dump(mode="json")[fld]) for c in untried if composition_matches(c, chosen)},
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
                f"{st.task.workload}.\nProfile: {profile_text(st.profile, 400)}\n"
                f"Results so far:\n{self._feedback_text(st)}\n"
                f"Chosen so far: {json.dumps(chosen) if chosen else 'nothing'}\n"
                f"Choose the {fld.replace('_', ' ')} (options listed best-first by the results so far):\n"
                f"{menu}\nAnswer with one option name."
            )
            pick = self._llm(st, prompt, choices=options, max_new_tokens=16).strip()
            chosen[fld] = pick if pick in options else options[0]
        comp = composition_from_choices(chosen)
        gen = generate(comp)
        return Candidate(
            name=gen.name, origin="compose", source=gen.source, detail=json.dumps(chosen), composition=comp
        )

    def _option_prior(self, st: LoopState, fld: str) -> dict[str, float]:
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

    def _write(self, st: LoopState, max_repairs: int = 3) -> Candidate | None:
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
            f"Profile: {profile_text(st.profile, 400)}\nResults so far:\n{self._feedback_text(st)}\n"
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
                return Candidate(name=name, origin="write", source=source, detail=f"repairs={attempt}")
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
        return Candidate(name=name, origin="write", source=source, detail="unrepaired") if source else None

    def plan(self, st: LoopState) -> Candidate | None:
        """After the screen: new schedulers, and every third round a tuning of the best so far."""
        if st.task.mode == "write":
            return self._write(st)
        if st.best is not None and (st.best.improvement or 0) > 0 and st.rounds % 3 == 0:
            cand = self._tune(st)
            if cand is not None:
                return cand
        return self._compose(st)

    # -- execution ------------------------------------------------------------------------------------
    def _verify(self, st: LoopState, source: str, stages: str = "all") -> Verdict:
        st.cost.verify_runs += 1
        out = self._tool_or_error(st, "sched_verify", source=source, stages=stages)
        return Verdict(ok=bool(out["ok"]), stage=out.get("stage", ""), reason=out.get("reason", ""))

    def screen(self, st: LoopState) -> list[tuple[Candidate, IterationRecord]]:
        """Round one: the repository's closest schedulers, verified together and measured together.

        Every seed is measured against EEVDF in the same boot, so the loop starts from the best of
        them (and never ends below it) instead of guessing which one to try first.
        """
        cands = [
            Candidate(name=h["name"], origin="repository", source=h["source"], detail="seed", base=h["name"])
            for h in st.hits[: st.task.seeds]
            if h.get("source") and h["name"] not in st.tried
        ]
        if not cands:
            return []
        st.cost.verify_runs += 1
        return self._measure_together(st, cands, st.task.reps)

    def _measure_together(
        self, st: LoopState, cands: list[Candidate], reps: int
    ) -> list[tuple[Candidate, IterationRecord]]:
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

    def confirm(self, st: LoopState) -> list[IterationRecord]:
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
            Candidate(name=r.name, origin=r.origin, source=st.sources[r.name], detail="confirmation")
            for r in top
        ]
        out = []
        for (cand, rec), first in zip(self._measure_together(st, cands, reps), top, strict=True):
            rec.index = first.index
            out.append(rec)
            self._report_progress(st, cand, rec, prefix="confirm")
        return out

    def _score(self, st: LoopState, rec: IterationRecord, m: dict[str, Any] | None) -> None:
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

    def execute(self, st: LoopState, cand: Candidate, index: int) -> IterationRecord:
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
    def learn(self, st: LoopState, cand: Candidate, rec: IterationRecord) -> None:
        st.records.append(rec)
        st.tried.add(cand.name)
        st.sources[cand.name] = cand.source
        st.blocks[cand.name] = blocks_of(st, cand)
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

    def _out_of_budget(self, st: LoopState) -> str:
        b = st.task.budget
        if time.time() - st.started > b.time_s:
            return "time budget spent"
        if self._tokens(st) > b.tokens:
            return "token budget spent"
        return ""

    def _flattened(self, st: LoopState) -> bool:
        """No better candidate in the last ``patience`` rounds."""
        return st.best is not None and st.stale_rounds >= st.task.patience

    # -- the whole run --------------------------------------------------------------------------------
    def run(self, task: Any) -> dict[str, Any]:
        task = task if isinstance(task, OptimizeTask) else OptimizeTask.model_validate(task)
        st = LoopState(task=task)
        self.observe(st)
        self.infer_goal(st)
        self.observe_deeper(st)
        st.hits = self._tool(
            st, "sched_search", query=f"{st.goal}. {profile_text(st.profile, 300)}", k=max(4, task.seeds)
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

    def _report_progress(self, st: LoopState, cand: Candidate, rec: IterationRecord, prefix: str = "") -> None:
        verdict = "ok" if rec.verdict.ok else f"rejected@{rec.verdict.stage}: {rec.verdict.reason[:80]}"
        vs = (
            ""
            if rec.improvement is None
            else f" {st.metric} {rec.candidate:.4g} vs EEVDF {rec.baseline:.4g} ({rec.improvement:+.1%})"
        )
        self.progress(f"{prefix or 'iter'} {rec.index}: {cand.name} [{cand.origin}] {verdict}{vs}")

    def finish(self, st: LoopState, stop: str) -> OptimizeReport:
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
