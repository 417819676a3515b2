"""The sched_ext toolchain as kernel tools: what the sched-agent calls through tool syscalls.

Why tools and not direct calls: the sched-agent is an ordinary aios agent, so every toolchain
operation it performs (profile, search the repository, compile, verify, measure, stress, deploy,
record) goes through the kernel's ToolManager — access-controlled (``sched_deploy`` is admin
only), serialised where it must be (one micro-VM at a time on a small machine: the VM tools share
one exclusive group) and audited like any other syscall.

Safety is enforced here, not trusted to the agent: ``sched_measure``, ``sched_screen``, ``sched_stress`` and
``sched_deploy`` refuse any source whose exact bytes did not pass every verifier stage in this
toolbox, and every load (VM or host) is appended to ``SchedToolbox.loads`` with the digest of the
program, so a test can assert that nothing unverified was ever loaded.

Public API::

    box = SchedToolbox(backend=ToolchainBackend(vm_options={}), workdir=None)
    register_sched_tools(kernel, box) -> list[str]      # the tool names
    box.verify(source, stages="all") / box.measure(source, workload, reps) / ...  (also direct)
    box.loads, box.verdicts                              # records for audits and tests
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEDULERS_DIR = Path(__file__).parent / "schedulers"
VM_GROUP = "sched_vm"  # tools that boot the micro-VM never run concurrently


class UnverifiedProgram(RuntimeError):
    """A load was asked for a program that has not passed every verifier stage here."""

    error_type = "UnverifiedProgram"


def digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


_OPS_NAME_RE = re.compile(r"\.name\s*=\s*\"([A-Za-z0-9_]+)\"")


def ops_name(source: str) -> str | None:
    """The sched_ext ops name a program declares (``.name = "..."``), if any."""
    m = _OPS_NAME_RE.search(source)
    return m.group(1) if m else None


class StageVerdict(BaseModel):
    stage: str
    ok: bool
    reason: str = ""
    seconds: float = 0.0


class VerifyOutcome(BaseModel):
    """What ``sched_verify`` returns (JSON to the agent): the first failing stage and why."""

    ok: bool
    stage: str = Field("", description="the stage that rejected it ('' when ok)")
    reason: str = ""
    stages: list[StageVerdict] = Field(default_factory=list)
    digest: str
    name: str = ""
    scope: Literal["all", "static"] = "all"


@dataclass
class LoadRecord:
    """One time a program was loaded outside the verifier (measurement, stress, host)."""

    digest: str
    name: str
    where: Literal["vm-measure", "vm-stress", "host"]
    verified: bool
    at: float = field(default_factory=time.time)


class ToolchainBackend:
    """The real toolchain modules behind the tools (tests substitute a double with the same methods).

    Kept apart from ``SchedToolbox`` so the safety logic (verified-only loads, records) is the
    same whichever backend runs the work.
    """

    def __init__(
        self,
        vm_options: dict[str, Any] | None = None,
        repository_path: Path | None = None,
        embedder: Any = None,
    ):
        self.vm_options = dict(vm_options or {})
        self.repository_path = repository_path
        self.embedder = embedder
        self._repo: Any = None
        self._lock = threading.Lock()

    def _vm_kw(self) -> dict[str, Any]:
        if not self.vm_options:
            return {}
        return {"vm": self._new_vm()}

    def _new_vm(self) -> Any:
        from aios.sched_ext.vm import MicroVM

        return MicroVM(**self.vm_options)

    def profile(self, workload: str, tier: str) -> Any:
        from aios.sched_ext import profile as prof

        return prof.profile(workload, tier=tier, **self._vm_kw())

    def repository(self) -> Any:
        with self._lock:
            if self._repo is None:
                from aios.sched_ext.repository import PolicyRepository

                self._repo = PolicyRepository(path=self.repository_path, embedder=self.embedder)
            return self._repo

    def verify(self, path: Path, stages: str) -> Any:
        from aios.sched_ext import verifier

        if stages == "static":
            return verifier.verify(path, stages=("compile", "static"))
        return verifier.verify(path, **self._vm_kw())

    def verify_many(self, paths: list[Path]) -> list[Any]:
        from aios.sched_ext import verifier

        return verifier.verify_many(paths, **self._vm_kw())

    def measure_objects(self, objects: list[Any], workload: str, reps: int) -> list[Any]:
        from aios.sched_ext.measure import measure_objects

        return measure_objects(objects, workload, reps, **self._vm_kw())

    def stress(self, obj: Path, seconds: float) -> Any:
        return stress_in_vm(obj, seconds, self._new_vm())

    def deploy(self, obj: Path) -> Any:
        from aios.sched_ext import loader

        return loader.load_host(obj)


@dataclass
class SchedToolbox:
    """The toolchain operations with their safety records; one per kernel (no global state)."""

    backend: Any = None
    workdir: Path | None = None
    verdicts: dict[str, VerifyOutcome] = field(default_factory=dict)
    verify_runs: list[VerifyOutcome] = field(default_factory=list)
    loads: list[LoadRecord] = field(default_factory=list)
    objects: dict[str, Path] = field(default_factory=dict)
    raw_verdicts: dict[str, Any] = field(default_factory=dict)  # the verifier's own results, by digest

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = ToolchainBackend()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="aios-sched-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- files ------------------------------------------------------------------------------------
    def source_path(self, source: str) -> Path:
        """Write ``source`` under the workdir, named by its digest (idempotent)."""
        d = digest(source)
        path = self.workdir / d / f"{ops_name(source) or 'sched'}.bpf.c"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        return path

    def fully_verified(self, source: str) -> bool:
        v = self.verdicts.get(digest(source))
        return v is not None and v.ok and v.scope == "all"

    def _require_verified(self, source: str, where: str) -> str:
        d = digest(source)
        if not self.fully_verified(source):
            raise UnverifiedProgram(
                f"refusing to load program {d} ({where}): it has not passed every verifier stage"
            )
        return d

    # -- profile ----------------------------------------------------------------------------------
    def profile(self, workload: str, tier: str = "summary") -> dict[str, Any]:
        """Workload profile, cheapest tier first (the analysis engine's ``profile``)."""
        from aios.sched_ext.workloads import get_workload

        w = get_workload(workload)
        p = self.backend.profile(workload, tier)
        data = as_dict(p)
        text = p.to_text() if hasattr(p, "to_text") else ""
        return {
            "workload": workload,
            "tier": tier,
            "description": w.description,
            "metrics": [m.name for m in w.metrics],
            "text": text if isinstance(text, str) and text else json.dumps(data, default=str)[:1500],
            "data": data,
        }

    # -- repository -------------------------------------------------------------------------------
    def repository(self) -> Any:
        return self.backend.repository()

    def search(self, query: str, k: int = 4) -> list[dict[str, Any]]:
        """Closest repository schedulers to ``query`` (description / workload profile), with source."""
        repo = self.repository()
        out = []
        for h in repo.search(query, k=k):
            d = as_dict(h)
            name = d.get("name", "")
            entry = as_dict(repo.get(name)) if hasattr(repo, "get") and "source" not in d else d
            out.append(
                {
                    "name": name,
                    "description": entry.get("description", d.get("description", "")),
                    "tunables": {
                        k2: (v.get("default") if isinstance(v, dict) else v)
                        for k2, v in (entry.get("tunables") or {}).items()
                    },
                    "goal": entry.get("goal"),
                    "blocks": entry.get("blocks") or {},
                    "score": d.get("score"),
                    "source": entry.get("source", ""),
                }
            )
        return out

    def record(
        self, name: str, source: str, description: str, workload: str, result: dict[str, Any]
    ) -> dict[str, Any]:
        """Record a measured candidate in the policy repository (program + result).

        Rejected candidates are not policies: their reasons live in the agent's storage and report.
        """
        repo = self.repository()
        if not result.get("verdict", {}).get("ok") or result.get("improvement") is None:
            return {"ok": True, "recorded": False}
        from aios.sched_ext.repository import PolicyEntry, ResultRecord

        try:
            repo.get(name)
        except KeyError:
            tags = ["sched-agent", str(result.get("origin", ""))]
            repo.add(
                PolicyEntry(
                    name=name,
                    ops_name=ops_name(source) or "",
                    description=description,
                    source=source,
                    tags=tags,
                    origin="sched-agent",
                )
            )
        metric = result.get("metric", "")
        rid = repo.record_result(
            ResultRecord(
                scheduler=name,
                workload=workload,
                primary_metric=metric,
                improvement=1.0 + float(result["improvement"]),
                metrics={
                    metric: {
                        "baseline_mean": result.get("baseline"),
                        "candidate_mean": result.get("candidate"),
                        "improvement": 1.0 + float(result["improvement"]),
                        "spread": result.get("spread"),
                    }
                },
                reps=int(result.get("reps", 0) or 0),
                stayed_enabled=True,
            )
        )
        return {"ok": True, "recorded": True, "id": rid}

    # -- build and verify ---------------------------------------------------------------------------
    def compile(self, source: str) -> dict[str, Any]:
        from aios.sched_ext import build

        path = self.source_path(source)
        res = build.compile_bpf(path)
        d = as_dict(res)
        return {"ok": bool(d.get("ok")), "diagnostics": d.get("diagnostics", []), "object": d.get("object")}

    def verify(self, source: str, stages: Literal["all", "static"] = "all") -> dict[str, Any]:
        """Run the staged verifier; ``static`` stops after the kernel-free stages (write-mode repair)."""
        d = digest(source)
        cached = self.verdicts.get(d)
        if cached is not None and (cached.scope == "all" or stages == "static" or not cached.ok):
            return cached.model_dump()
        v = self.backend.verify(self.source_path(source), stages)
        return self._record_verdict(source, v, stages).model_dump()

    def verify_batch(self, sources: list[str]) -> list[dict[str, Any]]:
        """Verify several programs, sharing one micro-VM boot for the kernel stages (benchmarks)."""
        todo = [s for s in sources if not self.fully_verified(s)]
        if todo:
            results = self.backend.verify_many([self.source_path(s) for s in todo])
            for src, v in zip(todo, results, strict=True):
                self._record_verdict(src, v, "all")
        return [self.verdicts[digest(s)].model_dump() for s in sources]

    def _record_verdict(self, source: str, v: Any, stages: Literal["all", "static"]) -> VerifyOutcome:
        d = digest(source)
        stage_list = []
        for s in getattr(v, "stages", []) or []:
            sd = as_dict(s)
            if sd.get("skipped"):
                continue
            reason = str(sd.get("reason", ""))
            if not sd.get("ok") and sd.get("details"):
                reason += "\n" + "\n".join(str(x) for x in sd["details"])
            stage_list.append(
                StageVerdict(
                    stage=str(sd.get("stage", sd.get("name", ""))),
                    ok=bool(sd.get("ok")),
                    reason=reason[:2500],
                    seconds=float(sd.get("duration_s", sd.get("seconds", 0.0)) or 0.0),
                )
            )
        failed = next((s for s in stage_list if not s.ok), None)
        out = VerifyOutcome(
            ok=bool(v.ok),
            stage="" if v.ok else (failed.stage if failed else str(getattr(v, "stage", "") or "")),
            reason="" if v.ok else (failed.reason if failed else str(getattr(v, "reason", "") or ""))[:3000],
            stages=stage_list,
            digest=d,
            name=ops_name(source) or "",
            scope=stages,
        )
        obj = getattr(v, "object_path", None) or getattr(v, "obj", None)
        if obj:
            self.objects[d] = Path(obj)
        self.raw_verdicts[d] = v
        self.verdicts[d] = out
        self.verify_runs.append(out)
        return out

    # -- measurement and validation -------------------------------------------------------------------
    def label(self, source: str) -> str:
        return "c" + digest(source)

    def verified_object(self, source: str) -> Any:
        from aios.sched_ext.measure import VerifiedObject

        d = self._require_verified(source, "measure")
        return VerifiedObject(
            self.label(source), self.source_path(source), self.objects[d], verdict=self.raw_verdicts[d]
        )

    def measure(self, source: str, workload: str, reps: int = 3) -> dict[str, Any]:
        """Candidate vs EEVDF on ``workload`` in one VM boot; only fully verified programs."""
        from aios.sched_ext.measure import MeasureError

        obj = self.verified_object(source)
        self.loads.append(LoadRecord(digest(source), ops_name(source) or "", "vm-measure", True))
        try:
            res = self.backend.measure_objects([obj], workload, reps)[0]
        except MeasureError as exc:
            return {"ok": False, "error": str(exc)[:2000]}
        return measure_summary(res)

    def screen(self, sources: list[str], workload: str, reps: int = 2) -> list[dict[str, Any]]:
        """Several programs at once: the ones not yet verified go through every verifier stage in
        one boot, then every one that passed is measured against EEVDF, all interleaved in a second
        boot. Two boots instead of two per program is what makes screening a whole repository
        affordable under TCG. Per program, in order: its verdict and (if it passed) its measurement.
        """
        from aios.sched_ext.measure import MeasureError

        unique = list(dict.fromkeys(sources))
        verdicts = dict(zip(unique, self.verify_batch(unique), strict=True))
        passed = [s for s in unique if verdicts[s]["ok"]]
        measured: dict[str, dict[str, Any]] = {}
        if passed:
            objs = [self.verified_object(s) for s in passed]
            for s in passed:
                self.loads.append(LoadRecord(digest(s), ops_name(s) or "", "vm-measure", True))
            try:
                by_label = {r.scheduler: r for r in self.backend.measure_objects(objs, workload, reps)}
                measured = {s: measure_summary(by_label[self.label(s)]) for s in passed}
            except MeasureError as exc:
                measured = {s: {"ok": False, "error": str(exc)[:2000]} for s in passed}
        return [{"verdict": verdicts[s], "measurement": measured.get(s)} for s in sources]

    def stress(self, source: str, seconds: float = 60.0) -> dict[str, Any]:
        """Run a stress mix for ``seconds`` under the scheduler: it must stay enabled throughout."""
        obj = self.verified_object(source)
        self.loads.append(LoadRecord(digest(source), ops_name(source) or "", "vm-stress", True))
        t0 = time.time()
        r = self.backend.stress(obj.obj, seconds)
        d = as_dict(r)
        return {
            "ok": bool(d.get("ok")),
            "reason": str(d.get("reason", ""))[:1000],
            "seconds": time.time() - t0,
            "detail": {k: v for k, v in d.items() if k not in ("ok", "reason")},
        }

    def deploy(self, source: str) -> dict[str, Any]:
        """Load on the host (host mode only: root and a sched_ext kernel); verified programs only."""
        problem = host_deploy_problem()
        if problem:
            return {"ok": False, "reason": problem}
        d = self._require_verified(source, "host")
        self.loads.append(LoadRecord(d, ops_name(source) or "", "host", True))
        handle = self.backend.deploy(self.objects[d])
        return {"ok": True, "name": ops_name(source), "handle": str(handle)}


def as_dict(obj: Any) -> dict[str, Any]:
    """A result object (pydantic model, dataclass, namespace or mapping) as a plain dict."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return dict(obj)
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    return dict(obj)


def host_deploy_problem() -> str:
    """Why this host cannot take a scheduler ('' when it can): root and a sched_ext kernel needed."""
    if os.geteuid() != 0:
        return "host deployment needs root (run as root, or leave out --deploy: the winner stays in the micro-VM)"
    if not Path("/sys/kernel/sched_ext/state").exists():
        return (
            "this host kernel has no sched_ext (no /sys/kernel/sched_ext), so nothing can be loaded on it; "
            "leave out --deploy: the winner is verified and measured in the micro-VM"
        )
    return ""


def measure_summary(res: Any) -> dict[str, Any]:
    """A ``MeasureResult`` as the flat JSON the agent reads: means per metric and the ratio's spread."""
    base, cand, spread, paired = {}, {}, {}, {}
    for name, m in res.metrics.items():
        base[name], cand[name] = m.baseline.mean, m.candidate.mean
        p = m.paired_improvement
        paired[name] = list(p.values)
        if len(p.values) > 1 and p.mean and p.mean == p.mean:  # one rep has no spread
            spread[name] = (p.max - p.min) / 2 / p.mean
    return {
        "ok": bool(res.stayed_enabled),
        "error": "" if res.stayed_enabled else "scheduler was ejected during measurement",
        "workload": res.workload,
        "baseline": base,
        "candidate": cand,
        "spread": spread,
        "paired": paired,
        "improvement": res.improvement,
        "primary_metric": res.primary_metric,
        "reps": res.reps,
        "vm_seconds": res.vm_seconds,
        "kernel_events": res.kernel_events,
    }


def register_sched_tools(kernel: Any, box: SchedToolbox, *, vm_timeout: float = 1800.0) -> list[str]:
    """Register the toolchain operations in ``kernel``'s ToolManager; returns their names."""
    tm = kernel.modules["tools"]

    def sched_profile(workload: str, tier: str = "summary") -> dict[str, Any]:
        """Profile a guest workload (cheap summary tier first; deeper tiers on request)."""
        return box.profile(workload, tier)

    def sched_search(query: str, k: int = 4) -> list[dict[str, Any]]:
        """Search the policy repository for schedulers close to a goal / workload profile."""
        return box.search(query, k)

    def sched_compile(source: str) -> dict[str, Any]:
        """Compile BPF C with clang; structured diagnostics on failure."""
        return box.compile(source)

    def sched_verify(source: str, stages: Literal["all", "static"] = "all") -> dict[str, Any]:
        """Staged verification (compile, static checks, kernel verifier, dynamic validation in the VM)."""
        return box.verify(source, stages)

    def sched_measure(source: str, workload: str, reps: int = 3) -> dict[str, Any]:
        """Measure a verified scheduler against EEVDF on a workload in one micro-VM boot."""
        return box.measure(source, workload, reps)

    def sched_screen(sources: list[str], workload: str, reps: int = 2) -> list[dict[str, Any]]:
        """Verify several schedulers (one boot) and measure those that pass against EEVDF (one boot)."""
        return box.screen(sources, workload, reps)

    def sched_stress(source: str, seconds: float = 60.0) -> dict[str, Any]:
        """Run a stress mix under a verified scheduler; it must stay enabled the whole time."""
        return box.stress(source, seconds)

    def sched_deploy(source: str) -> dict[str, Any]:
        """Load a verified scheduler on the host (host mode, root, sched_ext kernel only)."""
        return box.deploy(source)

    def sched_record(name: str, source: str, description: str, workload: str, result: dict[str, Any]) -> dict:
        """Record a candidate and its result in the policy repository."""
        return box.record(name, source, description, workload, result)

    specs = [
        (sched_profile, {"exclusive": VM_GROUP, "timeout": vm_timeout}),
        (sched_search, {"timeout": 300.0}),
        (sched_compile, {"timeout": 300.0}),
        (sched_verify, {"exclusive": VM_GROUP, "timeout": vm_timeout}),
        (sched_measure, {"exclusive": VM_GROUP, "timeout": vm_timeout}),
        (sched_screen, {"exclusive": VM_GROUP, "timeout": vm_timeout}),
        (sched_stress, {"exclusive": VM_GROUP, "timeout": vm_timeout}),
        (sched_deploy, {"timeout": 300.0, "groups": ("admin",)}),
        (sched_record, {"timeout": 300.0}),
    ]
    names = []
    for fn, opts in specs:
        tm.register(fn, owner="sched_ext", **opts)
        names.append(fn.__name__)
    return names


class StressResult(BaseModel):
    """The final candidate's stress validation: did it stay enabled under a heavy mix for the whole run?"""

    ok: bool
    reason: str = ""
    seconds: float = 0.0
    enabled_samples: int = 0
    total_samples: int = 0
    stressors: str = ""
    exits: list[str] = Field(default_factory=list)


#: The stress mix: CPU hogs, context-switch storms, fork/exit churn, pipes and yields at once, so
#: every scheduler callback runs constantly (mature schedulers have stalled only under such load).
STRESS_MIX = "--cpu 2 --switch 1 --fork 1 --pipe 1 --yield 1"


def stress_script(seconds: int, stressors: str = STRESS_MIX) -> str:
    """Guest job: register the scheduler, run the stress mix, sample ``state`` every second, unload."""
    return f"""
state() {{ cat /sys/kernel/sched_ext/state 2>/dev/null; }}
LINK=/sys/fs/bpf/aios_stress; mkdir -p $LINK
dmesg -c > /dev/null 2>&1
if ! bpftool struct_ops register /aios/stress.bpf.o $LINK > /tmp/reg.txt 2>&1 || [ "$(state)" != enabled ]; then
  aios_emit register /tmp/reg.txt
  aios_result "{{\\"kind\\":\\"stress\\",\\"loaded\\":false,\\"state\\":\\"$(state)\\"}}"
  dmesg > /tmp/dm.txt; aios_emit dmesg /tmp/dm.txt; exit 0
fi
stress-ng {stressors} --timeout {seconds}s > /tmp/sng.txt 2>&1 &
SNG=$!
t=0; on=0; n=0
while [ $t -lt {seconds} ]; do
  sleep 1; t=$((t+1)); n=$((n+1))
  [ "$(state)" = enabled ] && on=$((on+1))
done
wait $SNG; rc=$?
after=$(state)
rm -rf $LINK
k=0; while [ "$(state)" != disabled ] && [ $k -lt 50 ]; do sleep 0.1; k=$((k+1)); done
aios_result "{{\\"kind\\":\\"stress\\",\\"loaded\\":true,\\"samples\\":$n,\\"enabled\\":$on,\\"rc\\":$rc,\\"after\\":\\"$after\\",\\"unloaded\\":\\"$(state)\\"}}"
aios_emit stressng /tmp/sng.txt
dmesg > /tmp/dm.txt; aios_emit dmesg /tmp/dm.txt
exit 0
"""


def stress_in_vm(obj: Path, seconds: float, vm: Any) -> StressResult:
    """Run the stress mix for ``seconds`` under a verified scheduler object in the micro-VM.

    The object's watchdog (``timeout_ms``) is set to 5 s first, as in the verifier's dynamic
    stage, so a stall shows up as an ejection within the run instead of after 30 s.
    """
    from aios.sched_ext.build import patch_struct_ops_field
    from aios.sched_ext.loader import parse_exits

    secs = max(1, int(round(seconds)))
    data = patch_struct_ops_field(Path(obj).read_bytes(), "timeout_ms", 5000)
    t0 = time.time()
    res = vm.run(
        stress_script(secs), files={"/aios/stress.bpf.o": data}, timeout_s=secs * 3 + 120, tools=True
    )
    took = time.time() - t0
    rows = res.results_of("stress")
    exits = [e for e in parse_exits(res.blobs.get("dmesg", "")) if e.action == "disabled"]
    bad = [e for e in exits if e.kind != "unregistered"]
    exit_lines = [f"{e.name}: {e.reason}" for e in exits]
    if not rows:
        return StressResult(
            ok=False, reason=f"stress run did not report: {res.describe_failure()}", seconds=took
        )
    r = rows[-1]
    if not r.get("loaded"):
        return StressResult(
            ok=False, reason=f"did not load: {res.blobs.get('register', '')[-300:]}", seconds=took
        )
    n, on = int(r.get("samples", 0)), int(r.get("enabled", 0))
    problems = []
    if bad:
        problems.append(f"ejected by the kernel: {bad[0].reason}")
    if on < n or r.get("after") != "enabled":
        problems.append(f"enabled in {on}/{n} one-second samples (state after: {r.get('after')})")
    if r.get("unloaded") != "disabled":
        problems.append(f"did not unload cleanly (state {r.get('unloaded')})")
    if res.kernel_problem:
        problems.append(f"guest kernel problem: {res.kernel_problem}")
    return StressResult(
        ok=not problems,
        reason="; ".join(problems) or f"stayed enabled for {n} s of stress-ng {STRESS_MIX}",
        seconds=took,
        enabled_samples=on,
        total_samples=n,
        stressors=STRESS_MIX,
        exits=exit_lines,
    )
