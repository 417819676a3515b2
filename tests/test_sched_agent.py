"""The sched-agent's loop on a real kernel (syscalls, tools, memory, storage) with a toolchain double.

Two LLM cores are used:
- the tiny random model (``tiny_lm``): its answers are meaningless, which is the point for the
  constrained-choice tests — whatever it "thinks", every choice it returns is valid;
- ``RecordedLLM``: a **recorded-response LLM double** that replays canned answers in order.  No
  capable code model is available offline here, so write mode is tested with it: invalid code ->
  the real compiler's feedback -> repaired code.

The toolchain double (``FakeBackend``) replaces only the micro-VM parts (verifier's kernel
stages, measurement, stress); the safety logic (verified-only loads and their records) is the
real ``SchedToolbox``.  The loop with the real VM toolchain is in ``test_sched_agent_vm.py``.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aios.agents.sched_agent import (
    GOALS,
    Budget,
    OptimizeReport,
    OptimizeTask,
    SchedAgent,
    extract_code,
    infer_goal,
    set_tunables,
    source_tunables,
)
from aios.kernel.kernel import Kernel, KernelConfig
from aios.kernel.syscall import LLMResponse, LLMSyscall, SyscallFailed
from aios.sched_ext.compose import all_compositions
from aios.sched_ext.tools import SchedToolbox, UnverifiedProgram, register_sched_tools
from aios.sdk.calls import tool_call
from aios.sdk.runtime import agent_context

SCHED_DIR = Path(__file__).resolve().parents[1] / "aios" / "sched_ext" / "schedulers"
COMPOSED = {c.name for c in all_compositions()}


# ------------------------------------------------------------------------------------ doubles


class RecordedLLM:
    """Recorded-response LLM double (an ``LLMCore``): replays ``texts`` in order for free-text
    requests; for ``choices`` requests it answers ``pick(prompt, choices)`` (default: the first).
    Every prompt it saw is kept in ``prompts``."""

    def __init__(self, texts: list[str] | None = None, pick=None):
        self.texts = collections.deque(texts or [])
        self.pick = pick or (lambda prompt, choices: choices[0])
        self.queue: collections.deque[LLMSyscall] = collections.deque()
        self.prompts: list[str] = []

    def add(self, syscall: LLMSyscall) -> None:
        self.queue.append(syscall)

    def has_work(self) -> bool:
        return bool(self.queue)

    def step(self) -> bool:
        if not self.queue:
            return False
        sc = self.queue.popleft()
        prompt = "\n".join(m.content for m in sc.request.messages)
        self.prompts.append(prompt)
        if sc.request.choices:
            text, reason = self.pick(prompt, sc.request.choices), "choice"
        else:
            text, reason = (self.texts.popleft() if self.texts else "no more recorded answers"), "stop"
        sc.mark_running()
        sc.complete(
            LLMResponse(
                text=text,
                token_ids=[],
                finish_reason=reason,
                prompt_tokens=len(prompt) // 4,
                completion_tokens=max(1, len(text) // 4),
            )
        )
        return True

    def close(self) -> None:
        pass


class FakeBackend:
    """Replaces the micro-VM: verdicts from ``reject(source)``, improvements from ``gain(source)``."""

    def __init__(
        self,
        repo_dir: Path,
        gain=lambda src: -0.05,
        reject=lambda src: None,
        stress_ok=True,
        real_compile=False,
    ):
        from aios.kernel.embedding import HashEmbedder
        from aios.sched_ext.repository import PolicyRepository

        self.gain, self.reject, self.stress_ok, self.real_compile = gain, reject, stress_ok, real_compile
        self.repo = PolicyRepository(path=repo_dir, embedder=HashEmbedder(64))  # the real repository
        self.verified_paths: list[Path] = []
        self.measured: list[str] = []
        self.stressed: list[Path] = []

    def profile(self, workload: str, tier: str) -> dict[str, Any]:
        return {"cpus": 2, "runnable": 40, "context_switches": 1234, "tier": tier}

    def repository(self) -> Any:
        return self.repo

    def verify(self, path: Path, stages: str) -> Any:
        src = path.read_text()
        if self.real_compile:  # the real verifier's host stages (compile + static checks)
            from aios.sched_ext.verifier import verify

            res = verify(path, stop_after="static")
            if not res.ok or stages == "static":
                return res
        reason = self.reject(src)
        if reason:
            return SimpleNamespace(
                ok=False,
                reason=reason,
                stages=[
                    {"stage": "compile", "ok": True},
                    {"stage": "kernel_verifier", "ok": False, "reason": reason},
                ],
            )
        self.verified_paths.append(path)
        return SimpleNamespace(
            ok=True,
            reason="",
            stages=[{"stage": s, "ok": True} for s in ("compile", "static", "kernel_verifier", "dynamic")],
            object_path=path,
        )

    def verify_many(self, paths: list[Path]) -> list[Any]:
        return [self.verify(p, "all") for p in paths]

    def measure_objects(self, objects: list[Any], workload: str, reps: int) -> list[Any]:
        from aios.sched_ext.measure import MeasureResult, MetricComparison, Stats
        from aios.sched_ext.workloads import get_workload

        w = get_workload(workload)
        out = []
        for o in objects:
            src = Path(o.source).read_text()
            self.measured.append(src)
            g = self.gain(src)
            metrics = {}
            for m in w.metrics:
                base = 100.0
                cand = base * (1 + g) if m.better == "higher" else base / (1 + g)
                metrics[m.name] = MetricComparison(
                    name=m.name,
                    better=m.better,
                    baseline=Stats.of([base] * reps),
                    candidate=Stats.of([cand] * reps),
                    ratio=cand / base,
                    improvement=1 + g,
                    paired_improvement=Stats.of([1 + g] * reps),
                )
            out.append(
                MeasureResult(
                    scheduler=o.name,
                    workload=w.name,
                    goal=str(w.goal),
                    primary_metric=w.primary_metric,
                    reps=reps,
                    metrics=metrics,
                    improvement=1 + g,
                    stayed_enabled=True,
                )
            )
        return out

    def stress(self, obj: Path, seconds: float, stressors: str | None = None) -> Any:
        self.stressed.append(obj)
        return SimpleNamespace(
            ok=self.stress_ok, reason="" if self.stress_ok else "watchdog: runnable task stall"
        )

    def deploy(self, obj: Path, verdict: Any) -> Any:
        raise AssertionError("the tests never deploy on the host")

    def undeploy(self, handle: Any) -> None:
        raise AssertionError("the tests never deploy on the host")


def _kernel(tmp_path: Path, llm: Any) -> Kernel:
    cfg = KernelConfig(model="tiny", embedder="hash", data_dir=tmp_path / "data")
    return Kernel(cfg, llm=llm)


def _run(kernel: Kernel, backend: FakeBackend, task: OptimizeTask, tmp_path: Path):
    box = SchedToolbox(backend=backend, workdir=tmp_path / "work")
    register_sched_tools(kernel, box)
    lines: list[str] = []
    run = SchedAgent(progress=lines.append).start(kernel, task)
    assert run.ok, run.error
    return OptimizeReport.model_validate(run.output), box, lines


def _assert_safe(box: SchedToolbox, backend: FakeBackend) -> None:
    """Nothing unverified was loaded: every load and every measured source passed every stage."""
    passed = {v.digest for v in box.verify_runs if v.ok and v.scope == "all"}
    assert all(rec.verified and rec.digest in passed for rec in box.loads)
    from aios.sched_ext.tools import digest

    assert all(digest(src) in passed for src in backend.measured)


# ------------------------------------------------------------------------------------ tests


def test_loop_on_tiny_model_every_step_is_a_syscall(tiny_lm, tmp_path):
    """The tiny random model drives the loop; constrained choices keep every answer valid."""
    from aios.kernel.engine import LLMEngine

    model, tok = tiny_lm
    cfg = KernelConfig(model="tiny", embedder="hash", data_dir=tmp_path / "data", max_batch_size=2)
    kernel = Kernel(cfg, llm=LLMEngine(model, tok, cfg))
    backend = FakeBackend(
        tmp_path / "repo", gain=lambda src: 0.25 if "shortest observed runtime" in src else -0.02
    )
    try:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=4), reps=2, stress_s=60, seeds=1)
        report, box, lines = _run(kernel, backend, task, tmp_path)
        history = kernel.history(agent="sched-agent")
    finally:
        kernel.shutdown()
    assert report.goal in GOALS
    assert 1 <= len(report.iterations) <= 4
    assert report.iterations[0].origin == "repository"
    for it in report.iterations[1:]:
        assert it.origin in ("compose", "tuned", "repository")
        if it.origin == "compose":
            assert it.name in COMPOSED
    # schema-constrained choice: every constrained answer is one of its choices
    llm_calls = [s for s in history if s.kind == "llm"]
    assert llm_calls and all(s.result.text in s.request.choices for s in llm_calls if s.request.choices)
    kinds = {s.kind for s in history}
    assert {"llm", "tool", "memory", "storage"} <= kinds
    tools_used = {s.request.name for s in history if s.kind == "tool"}
    assert {"sched_profile", "sched_search", "sched_screen", "sched_verify", "sched_measure"} <= tools_used
    assert report.cost.llm_calls == len(llm_calls) and report.cost.completion_tokens > 0
    assert report.cost.verify_runs >= len(report.iterations) and report.cost.usd == 0
    assert any(line.startswith("iter 1:") for line in lines)
    if report.accepted:  # a shortest-runtime composition won; it went through the stress run
        assert "shortest" in report.winner_source and backend.stressed
        assert report.improvement == pytest.approx(0.25)
    _assert_safe(box, backend)


def test_keeps_eevdf_when_nothing_wins(tmp_path):
    llm = RecordedLLM()
    backend = FakeBackend(tmp_path / "repo", gain=lambda src: -0.1)
    with _kernel(tmp_path, llm) as kernel:
        report, box, _ = _run(
            kernel, backend, OptimizeTask(workload="schbench", budget=Budget(iterations=3)), tmp_path
        )
    assert report.winner == "EEVDF" and not report.accepted and report.improvement == 0.0
    assert report.stress is None and not backend.stressed
    # round 1 screened every repository seed together; rounds 2 and 3 tried one new scheduler each
    seeds = [it for it in report.iterations if it.origin == "repository"]
    assert len(seeds) == OptimizeTask(workload="x").seeds == 6 and len(report.iterations) == len(seeds) + 2
    assert all(it.improvement is not None and it.improvement < 0 for it in report.iterations)
    _assert_safe(box, backend)


def test_winner_must_survive_the_stress_run(tmp_path):
    backend = FakeBackend(tmp_path / "repo", gain=lambda src: 0.3, stress_ok=False)
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=2), stress_s=75)
        report, box, lines = _run(kernel, backend, task, tmp_path)
    assert backend.stressed and not report.accepted and report.winner == "EEVDF"
    assert report.stress and "stall" in report.stress["reason"]
    assert any("stress" in line for line in lines)


def test_rejected_candidates_are_recorded_with_reason_and_never_loaded(tmp_path):
    backend = FakeBackend(
        tmp_path / "repo",
        gain=lambda src: 0.4,
        reject=lambda src: "R0 invalid mem access 'map_value_or_null'" if "per-CPU" in src else None,
    )
    pick = {"dispatch": "per_cpu"}

    def chooser(prompt: str, choices: list[str]) -> str:
        return pick["dispatch"] if pick["dispatch"] in choices else choices[0]

    with _kernel(tmp_path, RecordedLLM(pick=chooser)) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=3), seeds=0)
        report, box, _ = _run(kernel, backend, task, tmp_path)
        stored = kernel.modules["storage"].list("sched-agent", prefix="sched/batch/")
    rejected = [it for it in report.iterations if not it.verdict.ok]
    assert rejected and all("map_value_or_null" in it.verdict.reason for it in rejected)
    assert all(it.improvement is None for it in rejected)
    # rejected sources were never measured; every record reached storage and the repository
    assert len(backend.measured) == len(report.iterations) - len(rejected)
    assert len(backend.repo.results()) == len(backend.measured)
    assert len([s for s in stored if not s["key"].endswith("/report")]) == len(report.iterations)
    _assert_safe(box, backend)


def test_budget_stops_the_loop(tmp_path):
    backend = FakeBackend(tmp_path / "repo", gain=lambda src: 0.01)
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=20, tokens=1500), seeds=0)
        report, _, _ = _run(kernel, backend, task, tmp_path)
    assert report.stop_reason == "token budget spent"
    assert len(report.iterations) < 20


def test_gains_flatten_stop(tmp_path):
    gains = iter([0.2, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0, 0.0])
    seen: dict[str, float] = {}

    def gain(src: str) -> float:
        return seen.setdefault(src, next(gains))

    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=8), seeds=1, patience=2, stress_s=60)
        report, _, _ = _run(kernel, FakeBackend(tmp_path / "repo", gain=gain), task, tmp_path)
    assert report.stop_reason == "gains flattened" and len(report.iterations) == 3
    assert report.accepted and report.improvement == pytest.approx(0.2)


def test_confirmation_undoes_a_lucky_measurement(tmp_path):
    """A new scheduler that measured +50% once (luck) but +5% when measured again loses, in the
    confirmation boot, to a seed that measures +20% every time: the winner's curse is undone."""
    seen: dict[str, int] = collections.Counter()

    def gain(src: str) -> float:
        seen[src] += 1
        if "aios_fifo" in src:
            return 0.2
        if "cmp_" in src:
            return 0.5 if seen[src] == 1 else 0.05
        return -0.1

    backend = FakeBackend(tmp_path / "repo", gain=gain)
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=2), stress_s=60)
        report, box, lines = _run(kernel, backend, task, tmp_path)
    loop_best = max(report.iterations, key=lambda r: r.improvement or -1)
    assert loop_best.origin == "compose" and loop_best.improvement == pytest.approx(0.5)
    assert {r.name for r in report.confirmation} == {loop_best.name, "fifo"}
    assert report.accepted and report.winner == "fifo" and report.improvement == pytest.approx(0.2)
    assert any(line.startswith("confirm") for line in lines)
    _assert_safe(box, backend)


def test_a_stress_failure_hands_over_to_the_next_contender(tmp_path):
    """The metric's winner stalls under the stress mix: it is recorded with its reason and the next
    confirmed contender (a seed that passes) wins instead of falling back to EEVDF at once."""
    backend = FakeBackend(
        tmp_path / "repo", gain=lambda src: 0.5 if "cmp_" in src else (0.2 if "aios_fifo" in src else -0.1)
    )

    def stress(obj: Path, seconds: float) -> Any:  # the double's object path is the source's
        backend.stressed.append(obj)
        stalls = "cmp_" in Path(obj).read_text()
        return SimpleNamespace(ok=not stalls, reason="watchdog: runnable task stall" if stalls else "")

    backend.stress = stress
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(workload="batch", budget=Budget(iterations=2), stress_s=60)
        report, box, lines = _run(kernel, backend, task, tmp_path)
    assert report.stress_failures and all("cmp_" in f["name"] for f in report.stress_failures)
    assert "stall" in report.stress_failures[0]["reason"]
    assert report.accepted and report.winner == "fifo" and report.improvement == pytest.approx(0.2)
    assert len(backend.stressed) == len(report.stress_failures) + 1
    _assert_safe(box, backend)


def test_confident_gain_needs_agreeing_repetitions():
    from aios.agents.sched_agent import IterationRecord, Verdict, confident_gain

    def rec(ratios: list[float]) -> IterationRecord:
        return IterationRecord(index=1, name="x", origin="compose", verdict=Verdict(ok=True), ratios=ratios)

    assert confident_gain(rec([1.4, 1.4, 1.4])) == pytest.approx(0.4)
    steady, noisy = confident_gain(rec([1.3, 1.4, 1.5, 1.35, 1.45])), confident_gain(rec([0.9, 1.3, 2.0]))
    assert 0.25 < steady < 0.4  # five agreeing reps: a gain close to their mean
    assert noisy < 0  # a higher mean (+35%), but three reps this far apart prove nothing
    assert confident_gain(rec([1.5, 1.5])) > confident_gain(rec([1.2, 1.8]))
    single = rec([1.2])
    single.improvement = 0.2
    assert confident_gain(single) == pytest.approx(0.2)  # one rep: the measured gain itself


def test_unverified_program_is_refused(tmp_path):
    backend = FakeBackend(tmp_path / "repo")
    box = SchedToolbox(backend=backend, workdir=tmp_path / "work")
    src = (SCHED_DIR / "fifo.bpf.c").read_text()
    with pytest.raises(UnverifiedProgram):
        box.measure(src, "batch", 1)
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        register_sched_tools(kernel, box)
        with agent_context(kernel, "someone"):
            with pytest.raises(SyscallFailed, match="UnverifiedProgram|not passed every verifier stage"):
                tool_call("sched_stress", {"source": src, "seconds": 1})
            with pytest.raises(SyscallFailed, match="PermissionDenied|not allowed|denied"):
                tool_call("sched_deploy", {"source": src})  # admin-only tool
            # a program verified only up to the static stages may not be loaded either
            box.verify(src, "static")
            with pytest.raises(SyscallFailed):
                tool_call("sched_measure", {"source": src, "workload": "batch", "reps": 1})
    assert not box.loads and not backend.measured


def test_goal_inference_maps_free_text_and_constrains():
    from aios.agents.sched_agent import GOAL_LABELS, explicit_goal

    seen = []

    def ask(messages: list[dict], choices: list[str]) -> str:
        seen.append(("\n".join(m["content"] for m in messages), choices))
        return "I think: makespan please"

    # no explicit goal: the model is asked, constrained to the labels; free text is still mapped
    assert infer_goal(ask, "batch-sort", None, {"text": "40 tasks"}) == "minimize makespan"
    prompt, choices = seen[0]
    assert choices == list(GOAL_LABELS) and set(GOAL_LABELS.values()) == set(GOALS)
    assert "Sort 40 data shards" in prompt and prompt.endswith("Observed: 40 tasks")
    # a goal the user names outright is taken as said (no LLM call)
    assert (
        infer_goal(ask, "batch", "lower the p99 wake-up latency please", {}) == "minimize p99 wake-up latency"
    )
    assert explicit_goal("make the average job finish sooner") == "minimize mean completion time"
    assert explicit_goal("go faster") is None and len(seen) == 1


def test_goal_examples_are_retrieved_from_storage_and_learned(tmp_path):
    """The planner's worked examples come from the vector DB (MiniLM: real semantics), nearest
    last, and a goal the user named outright becomes an example for the next request."""
    from aios.agents.sched_agent import (
        GOAL_EXAMPLE_PREFIX,
        GOAL_EXAMPLES,
        goal_examples,
        remember_goal_example,
    )

    kernel = Kernel(
        KernelConfig(model="tiny", embedder="minilm", data_dir=tmp_path / "data"), llm=RecordedLLM()
    )
    storage = kernel.modules["storage"]

    def keys() -> list[str]:
        return [i["key"] for i in storage.list("sched-agent", GOAL_EXAMPLE_PREFIX, 10_000)]

    try:
        with agent_context(kernel, "sched-agent"):
            request = (
                "Upscale 90 movie frames (one is huge); the trailer is cut only once every frame is upscaled."
            )
            seen = []

            def ask(messages: list[dict], choices: list[str]) -> str:
                seen.append(messages)
                return choices[0]

            infer_goal(ask, "not-registered", request, {}, examples=goal_examples)
            turns = seen[0][1:-1]  # system message first, the request last
            assert [t["role"] for t in turns] == ["user", "assistant"] * 4
            shots = [
                (u["content"].removeprefix("Workload: "), a["content"])
                for u, a in zip(turns[::2], turns[1::2], strict=True)
            ]
            assert len(shots) == 4 and all(s in GOAL_EXAMPLES for s in shots)
            assert (
                shots[-1][1] == "makespan"
            )  # the nearest example ("published only after every ...") is last
            # seeded once: a second retrieval adds nothing
            goal_examples(request)
            assert len(keys()) == len(GOAL_EXAMPLES)

            remember_goal_example(request, "minimize makespan")
            assert goal_examples(request)[-1] == (request, "makespan")
            assert len(keys()) == len(GOAL_EXAMPLES) + 1
    finally:
        kernel.shutdown()


def test_tunables_and_code_extraction():
    src = (SCHED_DIR / "sjf.bpf.c").read_text()
    tun = source_tunables(src)
    assert tun["slice_ns"] == 10_000_000
    new = set_tunables(src, {"slice_ns": 2_500_000})
    assert (
        source_tunables(new)["slice_ns"] == 2_500_000
        and source_tunables(new)["starve_ns"] == tun["starve_ns"]
    )
    assert extract_code("Here:\n```c\nint x;\n```\nand\n```c\nint longer_one;\n```") == "int longer_one;\n"


BROKEN = """```c
#include "aios_scx.h"
char _license[] SEC("license") = "GPL";
void BPF_STRUCT_OPS(wr1_enqueue, struct task_struct *p, u64 enq_flags)
{
	scx_bpf_dsq_insert(p, SHARED_DSQ, SCX_SLICE_DFL, enq_flags)
}
```"""


def _repaired() -> str:
    src = (SCHED_DIR / "fifo.bpf.c").read_text()
    return "Fixed:\n```c\n" + re.sub(r'\.name\s*=\s*"[^"]+"', '.name = "wr1"', src) + "```"


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_write_mode_with_recorded_double_repairs_from_compiler_feedback(tmp_path):
    """Recorded-response LLM double: invalid code -> real compiler feedback -> repaired code."""
    from aios.sched_ext.setup import load_setup

    if load_setup() is None:
        pytest.skip("needs `aios sched setup` (vmlinux.h)")
    llm = RecordedLLM(texts=[BROKEN, _repaired()])
    backend = FakeBackend(tmp_path / "repo", gain=lambda src: 0.15, real_compile=True)
    with _kernel(tmp_path, llm) as kernel:
        task = OptimizeTask(workload="batch", mode="write", budget=Budget(iterations=1), seeds=0, stress_s=60)
        report, box, lines = _run(kernel, backend, task, tmp_path)
    free_prompts = [p for p in llm.prompts if "BPF C" in p or "rejected" in p]
    assert len(free_prompts) == 2
    # the repair prompt carried the compiler's diagnostic back to the model
    assert "rejected it at stage compile" in free_prompts[1]
    assert "SHARED_DSQ" in free_prompts[1] or "expected ';'" in free_prompts[1]
    assert any("attempt 1 rejected at compile" in line for line in lines)
    it = report.iterations[0]
    assert it.origin == "write" and it.verdict.ok and it.detail == "repairs=1"
    assert report.accepted and '.name = "wr1"' in report.winner_source
    static_fail = [v for v in box.verify_runs if not v.ok]
    assert static_fail and static_fail[0].stage == "compile"
    _assert_safe(box, backend)


def test_real_backend_repository_search_and_record(tmp_path):
    """The real backend's repository side (no VM): search returns sources, results are recorded."""
    from aios.kernel.embedding import HashEmbedder
    from aios.sched_ext.tools import ToolchainBackend

    backend = ToolchainBackend(repository_path=tmp_path / "repo", embedder=HashEmbedder(64))
    box = SchedToolbox(backend=backend, workdir=tmp_path / "work")
    hits = box.search("minimize mean completion time of batch jobs with one long job", k=3)
    assert len(hits) == 3 and all(h["source"] and "struct_ops" in h["source"] for h in hits)
    assert all(isinstance(v, (int, float)) for h in hits for v in h["tunables"].values())
    src = hits[0]["source"]
    rec = {
        "verdict": {"ok": True},
        "improvement": 0.2,
        "metric": "mean_completion_ms",
        "baseline": 10.0,
        "candidate": 8.3,
        "origin": "compose",
    }
    assert box.record("cmp_test", src, "a test candidate", "batch", rec)["recorded"]
    assert not box.record("cmp_bad", src, "rejected", "batch", {"verdict": {"ok": False}})["recorded"]
    res = backend.repository().results(workload="batch")
    assert len(res) == 1 and res[0].improvement == pytest.approx(1.2)


def test_deeper_profile_only_when_the_goal_needs_it(tmp_path):
    """Cheapest tier first; the trace tier is taken only for a wake-up latency goal."""
    backend = FakeBackend(tmp_path / "repo", gain=lambda src: -0.1)
    tiers = []
    real_profile = backend.profile

    def profile(workload: str, tier: str) -> dict[str, Any]:
        tiers.append(tier)
        return real_profile(workload, tier)

    backend.profile = profile
    with _kernel(tmp_path, RecordedLLM()) as kernel:
        task = OptimizeTask(
            workload="schbench", goal="lower the p99 wake-up latency", budget=Budget(iterations=1)
        )
        report, _, lines = _run(kernel, backend, task, tmp_path)
        task = OptimizeTask(workload="batch", goal="shorter makespan", budget=Budget(iterations=1))
        SchedAgent(name="second").start(kernel, task)
    assert report.goal == "minimize p99 wake-up latency" and report.metric == "p99_wakeup_us"
    assert tiers == ["summary", "trace", "summary"]
    assert any("trace tier" in line for line in lines)


def test_measured_blocks_order_the_next_menu(tmp_path):
    """Learning: a winning seed's building blocks are listed first when the model composes next."""
    seen: dict[str, float] = {}

    def gain(src: str) -> float:
        return seen.setdefault(src, 0.3 if not seen else -0.2)  # the first candidate (a seed) wins

    llm = RecordedLLM()  # always answers the first option listed
    with _kernel(tmp_path, llm) as kernel:
        task = OptimizeTask(workload="batch", goal="mean completion", budget=Budget(iterations=2), seeds=1)
        report, _, _ = _run(kernel, FakeBackend(tmp_path / "repo", gain=gain), task, tmp_path)
    seed, composed = report.iterations
    assert seed.origin == "repository" and composed.origin == "compose"
    blocks = json.loads((SCHED_DIR / f"{seed.name}.json").read_text())["blocks"]
    chosen = json.loads(composed.detail)
    assert chosen["ordering"] == blocks["ordering"] and chosen["dispatch"] == blocks["dispatch"]
    assert any("[measured: +30%]" in p for p in llm.prompts)
