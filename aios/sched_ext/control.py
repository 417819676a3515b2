"""SchedCP's control plane over the toolchain: what an outside agent may ask of it, and the rules.

Why a layer of its own: the MCP server (``mcp_server.py``) is only a transport. What a client can
do, how programs are named, which input is refused and why, and the safety rule all live here, in
plain Python that a test can drive without a protocol in between.

The rule is the toolbox's, not re-implemented: ``SchedToolbox`` refuses to load anything whose
exact bytes did not pass every verifier stage in this run, and records every load with the
program's digest. The control plane adds what a long-lived server needs around it:

* programs are named by the digest ``submit`` returns, or by a repository scheduler's name (its
  source must still have passed every stage here before anything loads it);
* bad input (an oversized source, an unknown workload or program, a program the verifier rejects,
  a load the host cannot take) raises ``ControlError`` with one line the client can act on; the
  server keeps serving;
* one micro-VM at a time (a small machine cannot run two), and ``status`` says what is running;
* host loads only when the server was started in host mode, and at most one at a time;
* ``-I`` include directories only under the roots the operator named when starting the server
  (``aios mcp --include-root DIR``): a client cannot point the compiler at the rest of the host;
* every measurement is also stored in the policy repository (the program's repository entry, or a
  new ``mcp`` entry for a submitted one), so ``sched_read`` and ``sched_search`` see it afterwards.

Public API::

    plane = ControlPlane(box=SchedToolbox(...), host_mode=False, include_roots=())
    plane.workloads() / plane.profile(workload, tier) / plane.search(query, k) / plane.read(name)
    plane.submit(source, quick=False, include_dirs=()) -> dict   # every verifier stage (quick: host-side only)
    plane.measure(programs, workload, reps) -> dict                # results recorded in the repository
    plane.load(program, target, seconds) / plane.unload() / plane.status()
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from aios.sched_ext.tools import SchedToolbox, as_dict, digest, host_deploy_problem, ops_name

#: Largest source ``submit`` accepts. The kernel tree's biggest example scheduler is ~40 KB.
MAX_SOURCE_BYTES = 128 * 1024
_DIGEST_RE = re.compile(r"^[0-9a-f]{16}$")

T = TypeVar("T")


class ControlError(Exception):
    """A request the control plane refuses, with the reason in one line (nothing was changed)."""


@contextmanager
def _clear_errors(what: str) -> Iterator[None]:
    """Turn the toolchain's anticipated failures into one-line ``ControlError``s.

    The toolchain reports bad input and refusals as ``KeyError`` (unknown workload or scheduler),
    ``ValueError`` and ``RuntimeError`` subclasses (``UnverifiedProgram``, ``SetupError``,
    ``MeasureError``, ``VMError``, ``HostModeRefused``…). Anything else is a bug and propagates.
    """
    try:
        yield
    except ControlError:
        raise
    except KeyError as exc:
        raise ControlError(f"{what}: {exc.args[0] if exc.args else exc}") from exc
    except (ValueError, RuntimeError, OSError) as exc:
        raise ControlError(f"{what}: {type(exc).__name__}: {exc}"[:3000]) from exc


@dataclass
class ControlPlane:
    """The operations a client may call, over one toolbox (one per server: no global state)."""

    box: SchedToolbox
    host_mode: bool = False
    #: directories under which ``submit`` accepts ``include_dirs`` (none: -I is refused)
    include_roots: tuple[Path, ...] = ()
    started: float = field(default_factory=time.time)
    _vm: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _busy: str = ""

    # -- helpers ------------------------------------------------------------------------------------
    def _in_vm(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` holding the one micro-VM; ``status`` shows ``what`` meanwhile."""
        with self._vm:
            self._busy = what
            try:
                with _clear_errors(what.split(" ", 1)[0]):
                    return fn()
            finally:
                self._busy = ""

    def resolve(self, program: str) -> str:
        """The source a program name stands for: a digest ``submit`` returned, or a repository
        scheduler's name."""
        if _DIGEST_RE.match(program) and program in self.box.sources:
            return self.box.sources[program]
        try:
            return self.box.repository().get(program).source
        except KeyError:
            raise ControlError(
                f"unknown program {program!r}: pass the digest sched_submit returned, "
                "or the name of a repository scheduler (sched_search)"
            ) from None

    # -- observation --------------------------------------------------------------------------------
    def workloads(self) -> list[dict[str, Any]]:
        """The registered guest workloads a profile or measurement can run."""
        from aios.sched_ext.workloads import WORKLOADS

        return [
            {
                "name": w.name,
                "description": w.description,
                "goal": str(w.goal),
                "primary_metric": w.primary_metric,
                "metrics": [{"name": m.name, "better": m.better} for m in w.metrics],
            }
            for w in WORKLOADS.values()
        ]

    def profile(self, workload: str, tier: Literal["summary", "trace"] = "summary") -> dict[str, Any]:
        """Profile ``workload`` in the micro-VM (summary: cheap; trace: time series + wake-up probe)."""
        self._known_workload(workload)
        return self._in_vm(f"profile {workload} ({tier})", lambda: self.box.profile(workload, tier))

    def _known_workload(self, workload: str) -> None:
        from aios.sched_ext.workloads import get_workload

        with _clear_errors("workload"):
            get_workload(workload)

    # -- the repository -------------------------------------------------------------------------------
    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """Closest repository schedulers to ``query`` (goal, workload description or profile text)."""
        with _clear_errors("search"):
            hits = self.box.search(query, k)
        return [{k2: v for k2, v in h.items() if k2 != "source"} for h in hits]

    def read(self, name: str) -> dict[str, Any]:
        """A repository scheduler: its source, documentation, every recorded result, and whether
        its source passed every verifier stage in this run."""
        repo = self.box.repository()
        with _clear_errors("read"):
            try:
                entry = repo.get(name)
            except KeyError:
                raise KeyError(f"no scheduler {name!r} in the repository (sched_search lists them)") from None
            results = repo.results(scheduler=name)
        d = digest(entry.source)
        verdict = self.box.verdicts.get(d)
        return {
            **entry.model_dump(mode="json"),
            "digest": d,
            "verified_here": bool(verdict and verdict.ok and verdict.scope == "all"),
            "results": [
                {
                    "workload": r.workload,
                    "metric": r.primary_metric,
                    "improvement": r.improvement,
                    "reps": r.reps,
                    "date": r.date,
                }
                for r in results
            ],
        }

    # -- submit (verify) --------------------------------------------------------------------------------
    def _include_dirs(self, dirs: Sequence[str]) -> tuple[str, ...]:
        """The client's ``-I`` directories, each resolved (symlinks too) and inside an include root."""
        if not dirs:
            return ()
        if not self.include_roots:
            raise ControlError(
                "include directories are off: start the server with `aios mcp --include-root DIR` to allow "
                "-I directories under DIR (nothing was compiled)"
            )
        roots = [Path(r).resolve() for r in self.include_roots]
        out = []
        for d in dirs:
            p = Path(d).expanduser().resolve()
            if not any(p.is_relative_to(r) for r in roots):
                raise ControlError(
                    f"include directory {d!r} is outside the server's include roots "
                    f"({', '.join(map(str, roots))}); nothing was compiled"
                )
            if not p.is_dir():
                raise ControlError(f"include directory {d!r} does not exist (nothing was compiled)")
            out.append(str(p))
        return tuple(dict.fromkeys(out))

    def submit(self, source: str, quick: bool = False, include_dirs: Sequence[str] = ()) -> dict[str, Any]:
        """Every verifier stage on ``source`` (``quick``: the host-side stages only, which loads
        nothing and verifies nothing for loading), with ``include_dirs`` as ``-I`` (under the
        server's include roots only). A rejection raises ``ControlError`` naming the stage and the
        reason; the verdict stays in ``status`` either way."""
        size = len(source.encode())
        if size > MAX_SOURCE_BYTES:
            raise ControlError(f"source is {size} bytes; the limit is {MAX_SOURCE_BYTES} (nothing was compiled)")
        if not source.strip():
            raise ControlError("source is empty")
        dirs = self._include_dirs(include_dirs)
        stages = "static" if quick else "all"
        out = self._in_vm(
            f"verify {digest(source)} ({stages})", lambda: self.box.verify(source, stages=stages, include_dirs=dirs)
        )
        if not out["ok"]:
            reason = out["reason"].strip().splitlines()
            raise ControlError(
                f"rejected at stage {out['stage']} (program {out['digest']}): "
                + " | ".join(reason[:12])[:2500]
            )
        return {
            **out,
            "loadable": out["scope"] == "all",
            "next": "sched_measure / sched_load with program=" + out["digest"]
            if out["scope"] == "all"
            else "submit again without quick to run every stage before it can be loaded",
        }

    # -- measure, load, unload ----------------------------------------------------------------------------
    def measure(self, programs: list[str], workload: str, reps: int = 3) -> dict[str, Any]:
        """Each program against EEVDF on ``workload``, all interleaved in one VM boot (so they are
        compared with each other too). Every program must have passed every stage here. Each result
        is stored in the policy repository (``_repository_name``)."""
        self._known_workload(workload)
        sources = [self.resolve(p) for p in programs]
        self._require_verified(sources, "measure")
        with _clear_errors("measure"):
            names = [self._repository_name(p, s) for p, s in zip(programs, sources, strict=True)]
        results = self._in_vm(
            f"measure {len(sources)} on {workload}",
            lambda: self.box.compare(sources, workload, reps, record_as=names),
        )
        return {
            "workload": workload,
            "baseline": "EEVDF (the kernel's default), measured in the same boot",
            "results": [
                {"program": p, "digest": digest(s), "name": ops_name(s) or "", **r}
                for p, s, r in zip(programs, sources, results, strict=True)
            ],
        }

    def _repository_name(self, program: str, source: str) -> str:
        """Where a measurement of ``program`` is stored: the repository scheduler with these exact
        bytes (named, or found by digest), else a new ``mcp_<ops name>_<digest>`` entry."""
        repo = self.box.repository()
        d = digest(source)
        if not _DIGEST_RE.match(program):
            return program  # resolve() took its source from the repository entry itself
        same = next((e.name for e in repo.list() if e.source_sha == d), None)
        return same or f"mcp_{ops_name(source) or 'sched'}_{d[:8]}"

    def _require_verified(self, sources: list[str], what: str) -> None:
        """Refuse before any boot, naming every program that has not passed every stage here."""
        missing = [digest(s) for s in sources if not self.box.fully_verified(s)]
        if missing:
            raise ControlError(
                f"refusing to {what} {', '.join(missing)}: not passed every verifier stage in this run "
                "(sched_submit it first); nothing was loaded"
            )

    def load(self, program: str, target: Literal["vm", "host"] = "vm", seconds: float = 10.0) -> dict[str, Any]:
        """Load a verified program. ``vm``: a fresh micro-VM loads it, watches it for ``seconds``
        and unloads it (every boot starts fresh, so nothing stays loaded). ``host``: host mode
        only; it stays loaded until ``unload``."""
        source = self.resolve(program)
        self._require_verified([source], "load")
        if target == "vm":
            out = self._in_vm(f"load {digest(source)} in the VM", lambda: self.box.trial(source, seconds))
            return {"target": "vm", "digest": digest(source), "still_loaded": False, **out}
        if not self.host_mode:
            raise ControlError(
                "host loads are off: start the server with `aios mcp --host-mode` "
                "(root and a sched_ext kernel); target='vm' loads it in the micro-VM"
            )
        with _clear_errors("load"):
            out = self.box.deploy(source)
        if not out.get("ok"):
            raise ControlError(f"load refused: {out.get('reason', '')}")
        return {"target": "host", "still_loaded": True, **out}

    def unload(self) -> dict[str, Any]:
        """Unload what is loaded on the host (a micro-VM load ends with its boot)."""
        with _clear_errors("unload"):
            out = self.box.undeploy()
        return {**out, "vm": "nothing to unload: a micro-VM load ends with its boot"}

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the server has verified, loaded and is running now, and what the host can take."""
        from aios.sched_ext import load_setup, read_host_state

        setup = load_setup()
        host = read_host_state()
        deployed = [
            {"digest": d, "name": ops_name(self.box.sources.get(d, "")) or ""} for d in self.box.deployed
        ]
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "busy": self._busy or None,
            "host_mode": self.host_mode,
            "setup": {
                "ready": setup is not None,
                "kernel": setup.kernel_release if setup is not None else "",
                "hint": "" if setup is not None else "run `aios sched setup` (the first VM call also does)",
            },
            "host": {
                "sched_ext": host.available,
                "state": host.state,
                "ops": host.ops,
                "can_load": self.host_mode and not host_deploy_problem(),
                "problem": host_deploy_problem(),
            },
            "loaded": {"host": deployed[0] if deployed else None, "vm": None},
            "programs": [
                {
                    "digest": v.digest,
                    "name": v.name,
                    "ok": v.ok,
                    "scope": v.scope,
                    "stage": v.stage,
                    "reason": " | ".join(v.reason.strip().splitlines()[:3])[:400],
                }
                for v in self.box.verdicts.values()
            ],
            "loads": [as_dict(r) for r in self.box.loads],
        }
