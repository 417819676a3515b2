"""The sched_ext toolchain as kernel tools: what the sched-agent calls through tool syscalls.

Why tools and not direct calls: the sched-agent is an ordinary aios agent, so every toolchain
operation it performs (profile, search the repository, compile, verify, measure, stress, deploy,
record) goes through the kernel's ToolManager — access-controlled (``sched_deploy`` is admin
only), serialised where it must be (one micro-VM at a time on a small machine: the VM tools share
one exclusive group) and audited like any other syscall.

Safety is enforced here, not trusted to the agent: ``sched_measure``, ``sched_screen``, ``sched_stress`` and
``sched_deploy`` refuse any source whose exact bytes did not pass every verifier stage in this
toolbox, and every load (VM or host) is appended to ``SchedToolbox.loads`` with the digest of the
program, so a test can assert that nothing unverified was ever loaded. The MCP server
(``aios.sched_ext.mcp_server``) drives the same toolbox, so the rule holds for its clients too.

Why one file of ~620 lines: it is one concept, the verified-only rule. ``SchedToolbox`` enforces it
(``_require_verified`` before every load), the backend is the only path to the VM and the host, and
``register_sched_tools`` is a thin, one-line-per-tool layer over the toolbox. Splitting them would
put the rule and the paths that must respect it in different files, which is what a reader auditing
"can anything unverified be loaded?" should not have to chase.

Public API::

    box = SchedToolbox(backend=ToolchainBackend(vm_options={}), workdir=None)
    register_sched_tools(kernel, box) -> list[str]      # the tool names
    box.verify(source, stages="all") / box.measure(source, workload, reps) / ...  (also direct)
    box.trial(source, seconds) / box.deploy(source) / box.undeploy()   # load in the VM / on the host
    box.loads, box.verdicts, box.deployed                # records for audits and tests
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
    where: Literal["vm-measure", "vm-stress", "vm-load", "host"]
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

    def verify(self, path: Path, stages: str, include_dirs: tuple[str, ...] = ()) -> Any:
        from aios.sched_ext import verifier

        if stages == "static":
            return verifier.verify(path, stop_after="static", include_dirs=include_dirs)
        return verifier.verify(path, include_dirs=include_dirs, **self._vm_kw())

    def verify_many(self, paths: list[Path]) -> list[Any]:
        from aios.sched_ext import verifier

        return verifier.verify_many(paths, **self._vm_kw())

    def measure_objects(self, objects: list[Any], workload: str, reps: int) -> list[Any]:
        from aios.sched_ext.measure import measure_objects

        return measure_objects(objects, workload, reps, **self._vm_kw())

    def stress(self, obj: Path, seconds: float, stressors: str | None = None) -> Any:
        from aios.sched_ext.stress import STRESS_MIX, stress_in_vm

        return stress_in_vm(obj, seconds, self._new_vm(), STRESS_MIX if stressors is None else stressors)

    def deploy(self, obj: Path, verdict: Any) -> Any:
        """Load on the host with libbpf; the handle unloads on ``close()`` (and at exit)."""
        from aios.sched_ext.libbpf import HostScheduler

        handle = HostScheduler(obj, verified=verdict)
        handle.load()
        return handle

    def undeploy(self, handle: Any) -> None:
        handle.close()


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
    sources: dict[str, str] = field(default_factory=dict)  # every program seen, by digest
    include_dirs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # -I dirs its verdict was built with
    deployed: dict[str, Any] = field(default_factory=dict)  # digest -> host handle (at most one)

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
        self.sources.setdefault(d, source)
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

    def verify(
        self, source: str, stages: Literal["all", "static"] = "all", include_dirs: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Run the staged verifier; ``static`` stops after the kernel-free stages (write-mode repair).

        ``include_dirs`` (``-I``) are part of what was verified: the same source submitted again with
        other directories is verified again, and its new verdict and object replace the old ones (a
        load always takes the object of the latest verdict, which passed every stage or refuses).
        """
        d = digest(source)
        dirs = tuple(str(x) for x in include_dirs)
        cached = self.verdicts.get(d)
        same_dirs = self.include_dirs.get(d, ()) == dirs
        if cached is not None and same_dirs and (cached.scope == "all" or stages == "static" or not cached.ok):
            return cached.model_dump()
        path = self.source_path(source)
        v = self.backend.verify(path, stages, include_dirs=dirs) if dirs else self.backend.verify(path, stages)
        self.include_dirs[d] = dirs
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
        return self.compare([source], workload, reps)[0]

    def compare(
        self, sources: list[str], workload: str, reps: int = 3, record_as: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Several fully verified programs, each against EEVDF, interleaved in one VM boot.

        Every program is checked before anything boots: one unverified program refuses the
        whole call (``UnverifiedProgram``), so nothing is loaded. Per program, in order.
        ``record_as`` (a repository name per source) also stores each result in the policy
        repository under that name (``record_measurement``); the summary then says where.
        """
        from aios.sched_ext.measure import MeasureError

        unique = list(dict.fromkeys(sources))
        objs = [self.verified_object(s) for s in unique]
        for s in unique:
            self.loads.append(LoadRecord(digest(s), ops_name(s) or "", "vm-measure", True))
        try:
            by_label = {r.scheduler: r for r in self.backend.measure_objects(objs, workload, reps)}
        except MeasureError as exc:
            return [{"ok": False, "error": str(exc)[:2000]} for _ in sources]
        out = [measure_summary(by_label[self.label(s)]) for s in sources]
        for i, (s, name) in enumerate(zip(sources, record_as or [], strict=False)):
            out[i]["recorded"] = self.record_measurement(name, s, by_label[self.label(s)])
        return out

    def record_measurement(self, name: str, source: str, result: Any) -> dict[str, Any]:
        """Store a ``MeasureResult`` under repository scheduler ``name`` (added first if new).

        A new name gets an entry with origin ``mcp`` holding the measured source; an existing
        name keeps its entry (its source is what was measured: the caller resolved it so).
        """
        from aios.sched_ext.repository import PolicyEntry

        repo = self.repository()
        try:
            repo.get(name)
        except KeyError:
            repo.add(
                PolicyEntry(
                    name=name,
                    ops_name=ops_name(source) or "",
                    description=f"Submitted over MCP (program {digest(source)}) and measured with sched_measure.",
                    source=source,
                    tags=["mcp", "submitted"],
                    origin="mcp",
                )
            )
        rid = repo.record_result(result.model_copy(update={"scheduler": name}))
        return {"name": name, "id": rid}

    def screen(self, sources: list[str], workload: str, reps: int = 2) -> list[dict[str, Any]]:
        """Several programs at once: the ones not yet verified go through every verifier stage in
        one boot, then every one that passed is measured against EEVDF, all interleaved in a second
        boot. Two boots instead of two per program is what makes screening a whole repository
        affordable under TCG. Per program, in order: its verdict and (if it passed) its measurement.
        """
        unique = list(dict.fromkeys(sources))
        verdicts = dict(zip(unique, self.verify_batch(unique), strict=True))
        passed = [s for s in unique if verdicts[s]["ok"]]
        measured = dict(zip(passed, self.compare(passed, workload, reps), strict=True)) if passed else {}
        return [{"verdict": verdicts[s], "measurement": measured.get(s)} for s in sources]

    def stress(self, source: str, seconds: float = 60.0) -> dict[str, Any]:
        """Run a stress mix for ``seconds`` under the scheduler: it must stay enabled throughout."""
        obj = self.verified_object(source)
        self.loads.append(LoadRecord(digest(source), ops_name(source) or "", "vm-stress", True))
        t0 = time.time()
        return _stress_summary(self.backend.stress(obj.obj, seconds), t0)

    def trial(self, source: str, seconds: float = 10.0) -> dict[str, Any]:
        """Load the scheduler in a fresh micro-VM, watch it for ``seconds``, unload (one boot).

        What "loaded in the micro-VM" can mean when every boot starts fresh: nothing stays
        loaded after the call, and the reply says whether it stayed enabled the whole time.
        """
        obj = self.verified_object(source)
        self.loads.append(LoadRecord(digest(source), ops_name(source) or "", "vm-load", True))
        t0 = time.time()
        return _stress_summary(self.backend.stress(obj.obj, seconds, ""), t0)

    def deploy(self, source: str) -> dict[str, Any]:
        """Load on the host (host mode only: root and a sched_ext kernel); verified programs only.

        The kernel runs one sched_ext scheduler at a time, so a second deploy is refused until
        ``undeploy``; the handle is kept here so that unloading needs no argument.
        """
        problem = host_deploy_problem()
        if problem:
            return {"ok": False, "reason": problem}
        d = self._require_verified(source, "host")
        if self.deployed:
            (other,) = self.deployed
            return {
                "ok": False,
                "reason": f"program {other} is loaded on the host already; unload it first",
            }
        self.loads.append(LoadRecord(d, ops_name(source) or "", "host", True))
        self.deployed[d] = self.backend.deploy(self.objects[d], self.raw_verdicts[d])
        return {"ok": True, "name": ops_name(source), "digest": d}

    def undeploy(self) -> dict[str, Any]:
        """Unload what ``deploy`` loaded on the host (nothing to do when nothing is loaded)."""
        if not self.deployed:
            return {"ok": True, "unloaded": None}
        d, handle = next(iter(self.deployed.items()))
        self.backend.undeploy(handle)
        del self.deployed[d]
        return {"ok": True, "unloaded": d}


def _stress_summary(r: Any, t0: float) -> dict[str, Any]:
    """A stress or load-trial result as the flat JSON the callers read."""
    d = as_dict(r)
    return {
        "ok": bool(d.get("ok")),
        "reason": str(d.get("reason", ""))[:1000],
        "seconds": time.time() - t0,
        "detail": {k: v for k, v in d.items() if k not in ("ok", "reason")},
    }


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
        return "host deployment needs root (without it, schedulers are loaded only in the micro-VM)"
    if not Path("/sys/kernel/sched_ext/state").exists():
        return (
            "this host kernel has no sched_ext (no /sys/kernel/sched_ext), so nothing can be loaded on it; "
            "schedulers are verified, measured and loaded only in the micro-VM"
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
