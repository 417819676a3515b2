"""Measure schedulers against the default (EEVDF) on a guest workload, in the same VM boot.

Why same-boot and interleaved: under TCG the guest's speed drifts between boots and even within a
boot (page cache warm-up, host load). Running EEVDF and the candidate alternately in one boot,
after one discarded warm-up run, makes the per-repetition ratio meaningful; the spread of those
paired ratios is reported, not just means.

Safety: only verified schedulers are loaded. ``measure`` runs the staged verifier (compile, static,
kernel verifier, dynamic validation) first unless it is handed a passing verdict; the guest is a
throw-away micro-VM and nothing is loaded on the host.

Public API::

    measure(source_path, workload, reps=3, *, verdict=None, vm=None, progress=True) -> MeasureResult
    measure_objects(objects: Sequence[VerifiedObject], workload, reps=3, *, vm=None) -> list[MeasureResult]
    VerifiedObject(name, source, obj, verdict) / VerifiedObject.from_verdict(name, verify_result)
    MeasureResult, MetricComparison, Stats  (pydantic)

Ratios: ``ratio = candidate_mean / baseline_mean``; ``improvement`` is "how many times better" in
the metric's own direction (>1 means the candidate wins: baseline/candidate for lower-is-better
metrics, candidate/baseline for higher-is-better ones).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .workloads import Workload, get_workload, guest_files, parse_output


class MeasureError(RuntimeError):
    """The measurement could not be made (unverified scheduler, VM failure, unparsable output)."""


class Stats(BaseModel):
    """Summary of repeated values."""

    values: list[float]
    mean: float
    min: float
    max: float
    stdev: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        v = [float(x) for x in values]
        if not v:
            return cls(values=[], mean=float("nan"), min=float("nan"), max=float("nan"), stdev=float("nan"))
        return cls(values=v, mean=statistics.fmean(v), min=min(v), max=max(v),
                   stdev=statistics.stdev(v) if len(v) > 1 else 0.0)


class MetricComparison(BaseModel):
    """One metric under EEVDF and under the candidate."""

    name: str
    unit: str = ""
    better: str = "lower"
    baseline: Stats
    candidate: Stats
    ratio: float = Field(description="candidate mean / baseline mean")
    improvement: float = Field(description="times better in the metric's direction (>1: candidate wins)")
    paired_improvement: Stats = Field(description="per-repetition improvement (spread)")


class MeasureResult(BaseModel):
    """The outcome of measuring one scheduler on one workload."""

    scheduler: str
    source_path: str = ""
    workload: str
    goal: str
    primary_metric: str
    reps: int
    metrics: dict[str, MetricComparison]
    improvement: float = Field(description="primary metric improvement over EEVDF (>1 better)")
    stayed_enabled: bool = Field(description="the scheduler was still enabled after every run")
    kernel_events: list[str] = Field(default_factory=list, description="sched_ext dmesg lines")
    kernel: str = ""
    accel: str = ""
    date: str = ""
    vm_seconds: float = 0.0

    def summary(self) -> str:
        p = self.metrics[self.primary_metric]
        return (f"{self.scheduler} on {self.workload}: {self.primary_metric} {p.candidate.mean:.1f} vs "
                f"EEVDF {p.baseline.mean:.1f} {p.unit} -> {self.improvement:.2f}x "
                f"(per-rep {p.paired_improvement.min:.2f}-{p.paired_improvement.max:.2f})")


@dataclass(frozen=True)
class VerifiedObject:
    """A compiled scheduler object and the verdict that let it through (``name`` labels results).

    ``verdict`` is the staged verifier's result (anything with ``ok`` true); ``measure_objects``
    refuses objects without a passing one, so nothing unverified reaches even the guest.
    """

    name: str
    source: Path
    obj: Path
    verdict: Any = None

    @classmethod
    def from_verdict(cls, name: str, verdict: Any) -> VerifiedObject:
        return cls(name, Path(verdict.source), _verify(Path(verdict.source), verdict), verdict)


def _improvement(base: float, cand: float, better: str) -> float:
    if base <= 0 or cand <= 0:
        return float("nan")
    return base / cand if better == "lower" else cand / base


def _compare(w: Workload, base_runs: list[dict[str, float]], cand_runs: list[dict[str, float]]) -> dict[str, MetricComparison]:
    out: dict[str, MetricComparison] = {}
    for m in w.metrics:
        b = [r[m.name] for r in base_runs if m.name in r]
        c = [r[m.name] for r in cand_runs if m.name in r]
        if not b or not c:
            continue
        bs, cs = Stats.of(b), Stats.of(c)
        paired = [_improvement(x, y, m.better) for x, y in zip(b, c, strict=False)]
        out[m.name] = MetricComparison(
            name=m.name, unit=m.unit, better=m.better, baseline=bs, candidate=cs,
            ratio=cs.mean / bs.mean if bs.mean else float("nan"),
            improvement=_improvement(bs.mean, cs.mean, m.better), paired_improvement=Stats.of(paired))
    return out


def guest_script(workload: Workload, sched_names: Sequence[str], reps: int) -> str:
    """The job: warm-up, then per repetition EEVDF and every scheduler in rotating order.

    Each scheduler is registered with a pinned link, must read ``enabled``, runs the workload, must
    still read ``enabled`` afterwards, and is unloaded by removing the pin (state back to disabled).
    """
    names = " ".join(sched_names)
    return f"""
[ -f /aios/lib.sh ] && . /aios/lib.sh
WL=/aios/wl_cmd.sh
state() {{ cat /sys/kernel/sched_ext/state 2>/dev/null; }}
unload() {{
  rm -rf /sys/fs/bpf/aios_m_$1
  i=0; while [ "$(state)" != disabled ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}}
run_one() {{ # $1 = eevdf | scheduler name, $2 = rep
  if [ "$1" != eevdf ]; then
    ok=0
    if bpftool struct_ops register /aios/sched/$1.bpf.o /sys/fs/bpf/aios_m_$1 > /tmp/reg.log 2>&1; then
      # enabling takes a moment under TCG on a loaded host (switching every task over)
      i=0; while [ "$(state)" != enabled ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
      [ "$(state)" = enabled ] && ok=1
    fi
    if [ $ok -ne 1 ]; then
      aios_emit "loadfail_$1" /tmp/reg.log
      aios_result "{{\\"kind\\":\\"load\\",\\"sched\\":\\"$1\\",\\"ok\\":false,\\"state\\":\\"$(state)\\"}}"
      unload $1; return 1
    fi
  fi
  aios_emit_cmd "run_$1_$2" sh $WL
  if [ "$1" != eevdf ]; then
    aios_result "{{\\"kind\\":\\"after\\",\\"sched\\":\\"$1\\",\\"rep\\":$2,\\"state\\":\\"$(state)\\"}}"
    unload $1
  fi
}}
sh $WL > /dev/null 2>&1   # warm-up (page cache, first-touch), not measured
ALL="eevdf {names}"
r=1
while [ $r -le {reps} ]; do
  # rotate the order every repetition so no scheduler always runs first
  set -- $ALL; n=$#; k=$(( (r - 1) % n )); i=0; ORDER=""
  for s in $ALL; do i=$((i+1)); [ $i -gt $k ] && ORDER="$ORDER $s"; done
  i=0; for s in $ALL; do i=$((i+1)); [ $i -le $k ] && ORDER="$ORDER $s"; done
  for s in $ORDER; do run_one $s $r; done
  r=$((r+1))
done
dmesg | grep 'sched_ext' > /tmp/scx_dmesg.txt
aios_emit dmesg /tmp/scx_dmesg.txt
exit 0
"""


def measure_objects(objects: Sequence[VerifiedObject], workload: str | Workload, reps: int = 3, *,
                    vm: Any = None, timeout_s: float | None = None) -> list[MeasureResult]:
    """Measure several verified schedulers against EEVDF on one workload in ONE boot.

    The EEVDF runs are shared by all candidates (same boot, interleaved), which is what makes a
    whole benchmark matrix affordable under TCG.
    """
    w = get_workload(workload) if isinstance(workload, str) else workload
    if vm is None:
        from .vm import MicroVM

        vm = MicroVM()
    unverified = [o.name for o in objects if not bool(getattr(o.verdict, "ok", False))]
    if unverified:
        raise MeasureError(f"refusing to load unverified schedulers: {unverified}")
    names = [o.name for o in objects]
    if len(set(names)) != len(names) or any(not n.replace("_", "").isalnum() for n in names):
        raise MeasureError(f"scheduler labels must be unique identifiers: {names}")
    files: dict[str, Any] = dict(guest_files(w))
    files["/aios/wl_cmd.sh"] = w.command + "\n"
    for o in objects:
        files[f"/aios/sched/{o.name}.bpf.o"] = Path(o.obj)
    if timeout_s is None:
        # a hang guard, not an estimate: TCG slows down with the host's load (2 vCPUs on a shared machine)
        load = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        timeout_s = (60 + (1 + reps * (1 + len(objects))) * (w.approx_guest_s * 4 + 3)) * load
    t0 = time.monotonic()
    kw = {"tools": True} if w.guest_tools else {}  # stress-ng etc. live in the tools archive
    res = vm.run(guest_script(w, names, reps), files=files, timeout_s=timeout_s, **kw)
    if not res.ok:
        raise MeasureError(f"measurement VM failed: {res.describe_failure()}\n{res.output[-1500:]}")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in ["eevdf", *names]}
    by_rep: dict[str, dict[int, dict[str, float]]] = {n: {} for n in runs}
    for blob, text in res.blobs.items():
        if not blob.startswith("run_"):
            continue
        label, rep = blob[4:].rsplit("_", 1)
        try:
            by_rep[label][int(rep)] = parse_output(w, text)
        except (KeyError, ValueError) as exc:
            raise MeasureError(f"{label} rep {rep}: {exc}") from exc
    for label, reps_map in by_rep.items():
        runs[label] = [reps_map[r] for r in sorted(reps_map)]
    loadfail = [r for r in res.results_of("load") if not r.get("ok")]
    after = res.results_of("after")
    dmesg = [ln.strip() for ln in res.blobs.get("dmesg", "").splitlines() if ln.strip()]
    date = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    out: list[MeasureResult] = []
    for o in objects:
        failed = [r for r in loadfail if r.get("sched") == o.name]
        if failed:
            raise MeasureError(f"{o.name} did not load in the measurement VM (sched_ext state "
                               f"{failed[0].get('state')!r}): {res.blobs.get('loadfail_' + o.name, '')[-800:]}")
        # pair EEVDF and candidate by repetition
        b_map, c_map = by_rep["eevdf"], by_rep[o.name]
        reps_common = sorted(set(b_map) & set(c_map))
        metrics = _compare(w, [b_map[r] for r in reps_common], [c_map[r] for r in reps_common])
        if w.primary_metric not in metrics:
            raise MeasureError(f"{o.name}: no {w.primary_metric} measured; output: {res.output[-500:]}")
        stayed = all(a.get("state") == "enabled" for a in after if a.get("sched") == o.name)
        out.append(MeasureResult(
            scheduler=o.name, source_path=str(o.source), workload=w.name, goal=str(w.goal),
            primary_metric=w.primary_metric, reps=len(reps_common), metrics=metrics,
            improvement=metrics[w.primary_metric].improvement, stayed_enabled=stayed,
            kernel_events=[ln for ln in dmesg if o.name in ln or "disabled" in ln][-10:],
            kernel=res.guest_kernel, accel=res.accel, date=date, vm_seconds=time.monotonic() - t0))
    return out


def _verify(source: Path, verdict: Any) -> Path:
    """Return the compiled object of a scheduler that passed every verifier stage.

    ``verdict`` is the staged verifier's result for ``source``; anything not passing raises
    ``MeasureError``.
    """
    ok = bool(getattr(verdict, "ok", False))
    obj = getattr(verdict, "object_path", None) or getattr(verdict, "obj", None)
    if not ok:
        reason = getattr(verdict, "reason", None) or getattr(verdict, "summary", lambda: "")()
        raise MeasureError(f"{source}: not verified, refusing to load it: {reason}")
    if not obj or not Path(obj).is_file():
        raise MeasureError(f"{source}: verdict has no compiled object")
    return Path(obj)


def measure(source_path: str | Path, workload: str, reps: int = 3, *, verdict: Any = None, vm: Any = None,
            name: str | None = None, progress: bool = True, include_dirs: Sequence[Path | str] = (),
            overrides: dict[str, int] | None = None) -> MeasureResult:
    """Verify ``source_path`` (unless ``verdict`` passed) and measure it against EEVDF on ``workload``.

    ``include_dirs``/``overrides`` are the verifier's (``-I DIR``, ``--set NAME=VALUE``).
    """
    src = Path(source_path)
    w = get_workload(workload)
    if verdict is None:
        from . import verifier

        verdict = verifier.verify(src, include_dirs=include_dirs, overrides=overrides)
    obj = _verify(src, verdict)
    label = name or src.name.removesuffix(".bpf.c").replace("-", "_").replace(".", "_")
    if progress:
        print(f"measuring {label} vs EEVDF on {w.name}: {reps} reps (~{w.approx_guest_s * reps * 2:.0f}s in guest)",
              flush=True)
    return measure_objects([VerifiedObject(label, src, obj, verdict)], w, reps, vm=vm)[0]


def to_json(results: Sequence[MeasureResult]) -> str:
    return json.dumps([r.model_dump() for r in results], indent=1)
