"""Guest workloads: what schedulers are measured on, and the goal each one serves.

Why this exists: a scheduler is only "better" for a workload and a goal (mean completion time of a
batch, p99 wake-up latency of a server, makespan of a build). This module is the registry that
names every workload the micro-VM can run, the exact guest command, how its output is parsed into
metrics, which metric is primary and in which direction it improves, and the goal label the
sched-agent must infer for it.

The C programs in ``src/`` are compiled statically on the host (``gcc -O2 -static -pthread``), cached
by content hash under the sched_ext cache, and shipped into each boot as per-run files. The guest
also has rt-tests (cyclictest, hackbench) and stress-ng from ``setup.py``.

Sizes are chosen for the 2-vCPU TCG guest (about 30-70x slower than the host per vCPU): one run of a
workload takes roughly 0.5-3 s in the guest.

Public API::

    WORKLOADS: dict[str, Workload]                 # the registry
    get_workload(name) -> Workload                 # KeyError lists the known names
    list_workloads(tag=None) -> list[Workload]
    build_workloads(cache_dir=None) -> dict[str, Path]   # binary name -> static executable
    guest_files(workload, cache_dir=None) -> dict[str, Path]  # for MicroVM.run(files=...)
    parse_output(workload, text) -> dict[str, float]
    Goal, Metric, Workload (pydantic)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

SRC_DIR = Path(__file__).parent / "src"
#: Where binaries live inside the guest.
GUEST_BIN = "/aios/wl"
#: Programs built from ``src/NAME.c``.
PROGRAMS = ("schbench", "batchjobs", "build")


class Goal(StrEnum):
    """Optimization goals the sched-agent chooses between."""

    MIN_MEAN_COMPLETION = "min_mean_completion"
    MIN_MAKESPAN = "min_makespan"
    MIN_P99_LATENCY = "min_p99_latency"
    MAX_THROUGHPUT = "max_throughput"


class Metric(BaseModel):
    """One number a workload reports, and which way is better."""

    name: str
    unit: str
    better: Literal["lower", "higher"]


class Workload(BaseModel):
    """A registered guest workload."""

    name: str
    description: str
    goal: Goal
    primary_metric: str
    metrics: list[Metric]
    command: str = Field(description="guest shell command; prints the output parse_output reads")
    parser: Literal["json", "hackbench", "cyclictest", "stressng"] = "json"
    programs: list[str] = Field(default_factory=list, description="binaries from src/ it needs")
    guest_tools: list[str] = Field(default_factory=list, description="tools the guest image must have")
    tags: list[str] = Field(default_factory=list)
    approx_guest_s: float = 2.0

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"workload {self.name!r} has no metric {name!r}")

    @property
    def primary(self) -> Metric:
        return self.metric(self.primary_metric)


_BATCH_METRICS = [
    Metric(name="mean_completion_ms", unit="ms", better="lower"),
    Metric(name="short_mean_completion_ms", unit="ms", better="lower"),
    Metric(name="p90_completion_ms", unit="ms", better="lower"),
    Metric(name="makespan_ms", unit="ms", better="lower"),
    Metric(name="long_completion_ms", unit="ms", better="lower"),
    Metric(name="tasks_per_s", unit="1/s", better="higher"),
]
_GOAL_METRIC = {
    Goal.MIN_MEAN_COMPLETION: "mean_completion_ms",
    Goal.MIN_MAKESPAN: "makespan_ms",
    Goal.MAX_THROUGHPUT: "tasks_per_s",
}

#: The eight batch types of the sched-agent's goal-inference evaluation (SchedCP-style: 40 parallel
#: tasks, 39 short and 1 long). ``units`` sizes a short job at ~40 ms of guest CPU; the long job is
#: ``long_factor`` times longer. The goal follows from what the user of each job waits for.
_BATCH_KINDS: dict[str, tuple[int, Goal, str]] = {
    "compress": (3, Goal.MIN_MAKESPAN,
                 "Compress 40 files into one archive (one file is 10x bigger); the archive is usable "
                 "only when every file is compressed."),
    "checksum": (4, Goal.MIN_MEAN_COMPLETION,
                 "Verify checksums of 40 downloads (one is 10x bigger); each file is released to its "
                 "user as soon as its own checksum is verified."),
    "sort": (1, Goal.MIN_MAKESPAN,
             "Sort 40 data shards (one shard is 10x bigger) before a final merge that needs all of them."),
    "logscan": (2, Goal.MIN_MEAN_COMPLETION,
                "Scan 40 log files for errors and slow requests (one log is 10x bigger); each dashboard "
                "panel updates as soon as its own log is scanned."),
    "index": (3, Goal.MIN_MEAN_COMPLETION,
              "Index 40 directories for search (one is 10x bigger): write, read back and tokenize files; "
              "each directory becomes searchable as soon as it is indexed."),
    "compile": (2, Goal.MIN_MAKESPAN,
                "Compile 40 source files, each step a short-lived compiler process (one file is 10x "
                "bigger), before a link step that needs every object."),
    "map": (1, Goal.MIN_MAKESPAN,
            "Data-parallel map over 40 partitions with 2 threads each (one partition is 10x bigger); "
            "the reduce step waits for all partitions."),
    "pipeline": (2, Goal.MAX_THROUGHPUT,
                 "40 three-stage pipelines (produce, transform, consume through pipes; one stream is 10x "
                 "longer); the goal is the number of streams processed per second."),
}


def _batch(name: str, kind: str, units: int, goal: Goal, desc: str, tags: list[str]) -> Workload:
    return Workload(
        name=name, description=desc, goal=goal, primary_metric=_GOAL_METRIC[goal], metrics=_BATCH_METRICS,
        command=f"{GUEST_BIN}/batchjobs --kind={kind} --tasks=40 --units={units} --long_factor=10",
        programs=["batchjobs"], tags=["batch", "39-short-1-long", *tags], approx_guest_s=1.5)


def _registry() -> dict[str, Workload]:
    wl: dict[str, Workload] = {}
    wl["batch"] = _batch(
        "batch", "spin", 12, Goal.MIN_MEAN_COMPLETION,
        "Mixed batch jobs: 40 CPU-bound jobs start together, 39 short and 1 ten times longer; "
        "minimize the average job completion time.", ["cpu-bound"])
    for kind, (units, goal, desc) in _BATCH_KINDS.items():
        wl[f"batch-{kind}"] = _batch(f"batch-{kind}", kind, units, goal, desc, [kind])
    wl["schbench"] = Workload(
        name="schbench", goal=Goal.MIN_P99_LATENCY, primary_metric="p99_wakeup_us",
        description="schbench-like request server: 2 message threads wake 4 worker threads each every 5 ms, "
                    "each request is 200 us of CPU; 2 CPU-bound batch threads compete for the CPUs. "
                    "Minimize p99 wake-up latency (time from wake-up to running).",
        metrics=[Metric(name="p50_wakeup_us", unit="us", better="lower"),
                 Metric(name="p90_wakeup_us", unit="us", better="lower"),
                 Metric(name="p99_wakeup_us", unit="us", better="lower"),
                 Metric(name="max_wakeup_us", unit="us", better="lower"),
                 Metric(name="requests_per_s", unit="1/s", better="higher")],
        command=f"{GUEST_BIN}/schbench --message_threads=2 --workers=4 --work_us=200 --interval_us=5000 "
                "--runtime_ms=2000 --hogs=2",
        programs=["schbench"], tags=["latency", "wakeup", "server"], approx_guest_s=2.5)
    wl["schbench-forge"] = wl["schbench"].model_copy(update={
        "name": "schbench-forge",
        "description": "schbench-like head-to-head run (the scx-forge default shape): 4 message threads, "
                       "4 workers each, 100 us requests every 4 ms, no batch threads. Minimize p99 "
                       "wake-up latency.",
        "command": f"{GUEST_BIN}/schbench --message_threads=4 --workers=4 --work_us=100 --interval_us=4000 "
                   "--runtime_ms=2000 --hogs=0"})
    wl["build"] = Workload(
        name="build", goal=Goal.MIN_MAKESPAN, primary_metric="makespan_ms",
        description="Parallel build: 60 compile steps of very different lengths (many small files, a few "
                    "big ones), each a short-lived process, run 4 at a time like make -j4, then a link "
                    "step. Minimize the build's makespan.",
        metrics=[Metric(name="makespan_ms", unit="ms", better="lower"),
                 Metric(name="mean_step_ms", unit="ms", better="lower")],
        command=f"{GUEST_BIN}/build --jobs=60 --parallel=4 --unit_iters=300000",
        programs=["build"], tags=["build", "cpu-bound", "fork"], approx_guest_s=1.5)
    wl["cyclictest"] = Workload(
        name="cyclictest", goal=Goal.MIN_P99_LATENCY, primary_metric="p99_latency_us",
        description="cyclictest timer wake-up latency (2 threads, 1 ms period) while stress-ng runs 2 "
                    "CPU hogs. Minimize p99 latency.",
        metrics=[Metric(name="avg_latency_us", unit="us", better="lower"),
                 Metric(name="p99_latency_us", unit="us", better="lower"),
                 Metric(name="max_latency_us", unit="us", better="lower")],
        command="stress-ng --cpu 2 --timeout 4s >/dev/null 2>&1 & _hog=$!; sleep 0.3; "
                "cyclictest -q -t 2 -i 1000 -l 1500 -h 20000 2>&1; kill $_hog 2>/dev/null; wait",
        parser="cyclictest", guest_tools=["cyclictest", "stress-ng"], tags=["latency", "timer", "rt-tests"],
        approx_guest_s=3.0)
    wl["hackbench"] = Workload(
        name="hackbench", goal=Goal.MAX_THROUGHPUT, primary_metric="time_s",
        description="hackbench: 2 groups of 20 senders and 20 receivers exchanging messages over sockets "
                    "(wake-up heavy). Minimize completion time (maximize message throughput).",
        metrics=[Metric(name="time_s", unit="s", better="lower")],
        command="hackbench -g 2 -l 10 2>&1", parser="hackbench", guest_tools=["hackbench"],
        tags=["throughput", "wakeup", "ipc", "rt-tests"], approx_guest_s=4.0)
    wl["stressng-mix"] = Workload(
        name="stressng-mix", goal=Goal.MAX_THROUGHPUT, primary_metric="cpu_ops_per_s",
        description="stress-ng mix: 2 CPU stressors with 2 context-switch stressors for 3 s. Maximize "
                    "CPU work done (bogo ops/s) while switches keep coming.",
        metrics=[Metric(name="cpu_ops_per_s", unit="1/s", better="higher"),
                 Metric(name="switch_ops_per_s", unit="1/s", better="higher")],
        command="stress-ng --cpu 2 --switch 2 --timeout 3s --metrics-brief 2>&1", parser="stressng",
        guest_tools=["stress-ng"], tags=["throughput", "mix", "stress-ng"], approx_guest_s=3.5)
    return wl


WORKLOADS: dict[str, Workload] = _registry()


def get_workload(name: str) -> Workload:
    """The registered workload ``name`` (KeyError names the known ones)."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}") from None


def list_workloads(tag: str | None = None) -> list[Workload]:
    return [w for w in WORKLOADS.values() if tag is None or tag in w.tags]


# --------------------------------------------------------------------------- building


def _cache_root(cache_dir: Path | str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    from ..setup import default_cache_dir

    return default_cache_dir() / "workloads"


def _src_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(SRC_DIR.glob("*.[ch]")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_workloads(cache_dir: Path | str | None = None) -> dict[str, Path]:
    """Compile every program in ``src/`` statically (once per source version) and return their paths.

    Static linking because the guest has only the libraries its own tools need.
    """
    out = _cache_root(cache_dir) / _src_hash()
    paths = {name: out / name for name in PROGRAMS}
    if all(p.is_file() for p in paths.values()):
        return paths
    gcc = shutil.which("gcc")
    if not gcc:
        raise RuntimeError("gcc not found: install it (sudo apt-get install gcc libc6-dev)")
    out.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        with tempfile.NamedTemporaryFile(dir=out, prefix=f".{name}.", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        cmd = [gcc, "-O2", "-static", "-pthread", "-Wall", "-o", str(tmp_path), str(SRC_DIR / f"{name}.c"), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp_path.unlink(missing_ok=True)
            raise RuntimeError(f"building workload {name} failed:\n{proc.stderr[-2000:]}")
        tmp_path.replace(path)
    return paths


def guest_files(workload: Workload | str, cache_dir: Path | str | None = None) -> dict[str, Path]:
    """Per-run files (guest path -> host path) that ``workload`` needs."""
    w = get_workload(workload) if isinstance(workload, str) else workload
    if not w.programs:
        return {}
    built = build_workloads(cache_dir)
    return {f"{GUEST_BIN}/{p}": built[p] for p in w.programs}


# --------------------------------------------------------------------------- parsing


def _last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON line in workload output: {text[-300:]!r}")


def _parse_cyclictest(text: str) -> dict[str, float]:
    """Histogram mode (-h): rows "usec count count ..." then "# Max Latencies" etc."""
    counts: dict[int, int] = {}
    maxes: list[float] = []
    avgs: list[float] = []
    for line in text.splitlines():
        if line.startswith("# Max Latencies:"):
            maxes = [float(x) for x in line.split(":", 1)[1].split()]
        elif line.startswith("# Avg Latencies:"):
            avgs = [float(x) for x in line.split(":", 1)[1].split()]
        elif re.match(r"^\d{6}\s", line):
            parts = [int(x) for x in line.split()]
            counts[parts[0]] = counts.get(parts[0], 0) + sum(parts[1:])
    total = sum(counts.values())
    if not total and not maxes:
        raise ValueError(f"no cyclictest histogram in output: {text[-300:]!r}")
    mx = max(maxes) if maxes else 0.0
    p99 = mx  # an overflowed histogram (samples past its last bucket) falls back to the max
    if total:
        need, acc = math.ceil(0.99 * total), 0
        for us in sorted(counts):
            acc += counts[us]
            if acc >= need:
                p99 = float(us)
                break
    return {"avg_latency_us": sum(avgs) / len(avgs) if avgs else 0.0, "p99_latency_us": p99, "max_latency_us": mx or p99}


def _parse_hackbench(text: str) -> dict[str, float]:
    m = re.findall(r"Time:\s*([0-9.]+)", text)
    if not m:
        raise ValueError(f"no 'Time:' in hackbench output: {text[-300:]!r}")
    return {"time_s": float(m[-1])}


def _parse_stressng(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.search(r"metrc:\s*\[\d+\]\s+(\w+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", line)
        if m:
            out[f"{m.group(1)}_ops_per_s"] = float(m.group(6))
    if not out:
        raise ValueError(f"no stress-ng metrics in output: {text[-300:]!r}")
    return out


def parse_output(workload: Workload | str, text: str) -> dict[str, float]:
    """Numbers from one run's output, keyed by metric name (only numeric fields)."""
    w = get_workload(workload) if isinstance(workload, str) else workload
    if w.parser == "json":
        data = _last_json(text)
        return {k: float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if w.parser == "cyclictest":
        return _parse_cyclictest(text)
    if w.parser == "hackbench":
        return _parse_hackbench(text)
    return _parse_stressng(text)
