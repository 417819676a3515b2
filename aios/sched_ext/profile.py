"""Workload analysis engine: what a workload looks like to the scheduler, at tiers of cost.

Why: the sched-agent must infer a goal and pick a policy from observations — how many tasks are
runnable, how often they switch and wake, how their CPU time is distributed (one long job among
short ones? many short sleepers?) — not from program names. Profiles are collected *inside* the
guest while the workload runs (the host kernel has no sched_ext and is never the subject).

Tiers:

* ``summary`` (cheap, ~1 boot + one workload run): CPU count; ``/proc/stat`` context switches,
  runnable/blocked counts and process creations sampled every 0.5 s; per-task run time, wait time,
  timeslices (``/proc/*/task/*/schedstat``) and voluntary/involuntary switches and wake-ups
  (``/proc/*/task/*/sched``) for every task the workload created.
* ``trace`` (deeper): the same sampled every 0.1 s, kept as a time series (per-task runtime
  distribution over time), plus a cyclictest probe running beside the workload for the wake-up
  latency the workload inflicts.

Both tiers also attach a BPF collector (``probes/task_lifetimes.bpf.c``: fork/exec/exit/switch/
wake-up tracepoints, filtered to the workload's descendants) for the run, so tasks that live for
milliseconds — which 0.2 s sampling never sees — are counted too (``WorkloadProfile.lifetimes``).

Public API::

    profile(workload, tier="summary", vm=None) -> WorkloadProfile
    WorkloadProfile.to_text() -> str          # compact description for search and LLM prompts
    parse_samples(text, ...) -> WorkloadProfile   # host-side parser (tested without a VM)
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .workloads import Workload, get_workload, guest_files, parse_output

Tier = Literal["summary", "trace"]


class TaskStats(BaseModel):
    """One task (thread) the workload created, as last observed."""

    tid: int
    pid: int
    runtime_ms: float
    wait_ms: float
    timeslices: int
    voluntary_switches: int = 0
    involuntary_switches: int = 0
    wakeups: int = 0

    @property
    def avg_burst_ms(self) -> float:
        return self.runtime_ms / self.timeslices if self.timeslices else self.runtime_ms


class Distribution(BaseModel):
    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    max: float = 0.0
    cv: float = Field(0.0, description="coefficient of variation: >1 means a long tail")

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            return cls()
        v = sorted(values)
        mean = statistics.fmean(v)
        sd = statistics.pstdev(v) if len(v) > 1 else 0.0

        def q(p: float) -> float:
            return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

        return cls(count=len(v), mean=mean, p50=q(0.5), p90=q(0.9), max=v[-1], cv=sd / mean if mean else 0.0)


class TaskLifetimes(BaseModel):
    """What the BPF collector counted: every task of the workload, however short-lived."""

    forks: int = 0
    execs: int = 0
    exits: int = 0
    short_lived: int = Field(0, description="tasks that exited less than 10 ms after they were forked")
    switches: int = 0
    wakeups: int = 0
    voluntary_fraction: float = 0.0
    lifetime_ms: Distribution = Field(default_factory=Distribution, description="of exited tasks (log2 buckets)")
    runtime_ms: Distribution = Field(default_factory=Distribution, description="CPU time of exited tasks")
    max_lifetime_ms: float = 0.0

    @classmethod
    def from_counters(cls, c: dict[str, Any]) -> TaskLifetimes:
        """From the collector's ``.bss`` (``bpftool -j map dump``, flattened)."""
        def hist(name: str) -> list[float]:
            out: list[float] = []
            for b, n in enumerate(c.get(name) or []):
                out += [1.5 * (1 << b) / 1000.0] * int(n)   # bucket b holds [2^b, 2^(b+1)) us
            return out

        vol, inv = int(c.get("nr_vol_switches", 0)), int(c.get("nr_invol_switches", 0))
        return cls(forks=int(c.get("nr_forks", 0)), execs=int(c.get("nr_execs", 0)), exits=int(c.get("nr_exits", 0)),
                   short_lived=int(c.get("nr_short", 0)), switches=int(c.get("nr_switches", 0)),
                   wakeups=int(c.get("nr_wakeups", 0)), voluntary_fraction=vol / (vol + inv) if vol + inv else 0.0,
                   lifetime_ms=Distribution.of(hist("lifetime_hist")), runtime_ms=Distribution.of(hist("runtime_hist")),
                   max_lifetime_ms=int(c.get("max_lifetime_us", 0)) / 1000.0)


class TraceSample(BaseModel):
    t_s: float
    runnable: int
    blocked: int
    ctxt_delta: int
    live_tasks: int
    top_runtime_ms: float = Field(description="largest per-task runtime so far")


class WorkloadProfile(BaseModel):
    """Observations of one workload run (guest kernel: EEVDF)."""

    workload: str
    tier: Tier
    cpus: int
    duration_s: float
    context_switches: int
    context_switches_per_s: float
    processes_created: int
    runnable_mean: float
    runnable_max: int
    blocked_max: int
    tasks_seen: int
    runtime_ms: Distribution
    avg_burst_ms: Distribution
    wakeups_per_s: float
    voluntary_fraction: float = Field(description="share of switches where the task slept (vs preempted)")
    short_burst_fraction: float = Field(description="share of tasks whose average burst is < 2 ms")
    longest_task_share: float = Field(description="longest task's runtime / total runtime")
    top_tasks: list[TaskStats] = Field(default_factory=list)
    workload_metrics: dict[str, float] = Field(default_factory=dict)
    trace: list[TraceSample] = Field(default_factory=list)
    wakeup_latency_us: dict[str, float] = Field(default_factory=dict, description="trace tier: cyclictest probe")
    lifetimes: TaskLifetimes | None = Field(None, description="BPF collector: every task, short-lived included")

    def to_text(self) -> str:
        """A compact, name-free description (for semantic search and for the planner's prompt)."""
        shape = []
        if self.runtime_ms.cv > 1.0 or self.longest_task_share > 0.15:
            shape.append("very unequal task lengths (a few long jobs among many short ones)")
        if self.short_burst_fraction > 0.5:
            shape.append("mostly short CPU bursts with frequent sleeps (interactive / wake-up heavy)")
        if self.voluntary_fraction < 0.3:
            shape.append("CPU-bound tasks that are mostly preempted rather than sleeping")
        if self.processes_created > 20:
            shape.append("many short-lived processes")
        if self.runnable_mean > self.cpus * 2:
            shape.append("heavily overloaded run queues")
        return (f"{self.cpus} CPUs, {self.tasks_seen} tasks, runnable mean {self.runnable_mean:.1f} "
                f"(max {self.runnable_max}), {self.context_switches_per_s:.0f} context switches/s, "
                f"{self.wakeups_per_s:.0f} wake-ups/s, {self.processes_created} processes created; "
                f"task runtime p50 {self.runtime_ms.p50:.1f} ms, p90 {self.runtime_ms.p90:.1f} ms, "
                f"max {self.runtime_ms.max:.1f} ms (cv {self.runtime_ms.cv:.2f}); average burst p50 "
                f"{self.avg_burst_ms.p50:.2f} ms; voluntary switches {self.voluntary_fraction:.0%}. "
                + "; ".join(shape))


_SAMPLER = r"""
snap() { # $1 = sample index, $2 = 1 to read /proc/*/sched too (slow: ~60 lines per task under TCG)
  read up _ < /proc/uptime; echo "S $1 $up"
  while read k v _; do
    case $k in ctxt|procs_running|procs_blocked|processes) echo "P $k $v";; esac
  done < /proc/stat
  for f in /proc/[0-9]*/task/[0-9]*; do
    read a b c < $f/schedstat 2>/dev/null || continue
    p=${f#/proc/}; echo "T ${p%%/*} ${f##*/} $a $b $c"
    [ "$2" = 1 ] && while read k _ v _; do
      case $k in nr_voluntary_switches|nr_involuntary_switches|nr_wakeups) echo "W ${f##*/} $k $v";; esac
    done < $f/sched 2>/dev/null
  done
}
"""


#: The workload starts stopped, the collector is attached with the workload's pid as its filter,
#: then the workload continues: nothing it forks can be missed.
_START_WITH_COLLECTOR = r"""
sh -c 'kill -STOP $$; exec sh /aios/wl_cmd.sh' > /tmp/wl_out.txt 2>&1 &
WLPID=$!
n=0; while [ $n -lt 100 ] && ! grep -q '^State:.*stopped' /proc/$WLPID/status 2>/dev/null; do sleep 0.02; n=$((n+1)); done
mkdir -p /sys/fs/bpf/aios_col
if bpftool prog loadall /aios/collector.bpf.o /sys/fs/bpf/aios_col autoattach > /tmp/col_load.txt 2>&1; then
  k=$(printf '%02x %02x %02x %02x' $((WLPID & 255)) $(((WLPID >> 8) & 255)) $(((WLPID >> 16) & 255)) $(((WLPID >> 24) & 255)))
  bpftool map update name target key hex 00 00 00 00 value hex $k >> /tmp/col_load.txt 2>&1 || echo COLLECTOR-FILTER-FAILED >> /tmp/col_load.txt
else
  echo COLLECTOR-LOAD-FAILED >> /tmp/col_load.txt
fi
kill -CONT $WLPID
"""

_DUMP_COLLECTOR = r"""
id=$(bpftool map show 2>/dev/null | awk -F: '/ name [^ ]*\.bss /{print $1}' | head -1)
[ -n "$id" ] && bpftool -j map dump id $id > /tmp/col.json 2>&1 && aios_emit collector /tmp/col.json
grep -q FAILED /tmp/col_load.txt 2>/dev/null && aios_emit collector_load /tmp/col_load.txt
rm -rf /sys/fs/bpf/aios_col
"""


def guest_script(workload: Workload, tier: Tier, collector: bool = False) -> str:
    period = "0.05" if tier == "trace" else "0.2"
    deep = "1" if tier == "trace" else "0"
    probe = ("cyclictest -q -t 1 -i 2000 -D 2 -h 20000 > /tmp/ct.txt 2>&1 &\n" if tier == "trace" else "")
    start = _START_WITH_COLLECTOR if collector else "sh /aios/wl_cmd.sh > /tmp/wl_out.txt 2>&1 &\nWLPID=$!\n"
    return f"""[ -f /aios/lib.sh ] && . /aios/lib.sh
echo 1 > /proc/sys/kernel/sched_schedstats 2>/dev/null
{_SAMPLER}
sh /aios/wl_cmd.sh > /dev/null 2>&1   # warm-up
ls -d /proc/[0-9]*/task/[0-9]* 2>/dev/null | awk -F/ '{{print "B", $5}}' > /tmp/samples.txt
echo "C $(grep -c ^processor /proc/cpuinfo)" >> /tmp/samples.txt
{probe}{start}
i=0
while kill -0 $WLPID 2>/dev/null; do snap $i {deep} >> /tmp/samples.txt 2>/dev/null; i=$((i+1)); sleep {period}; done
wait $WLPID
snap $i {deep} >> /tmp/samples.txt 2>/dev/null
wait
{_DUMP_COLLECTOR if collector else ""}
aios_emit samples /tmp/samples.txt
aios_emit wl_out /tmp/wl_out.txt
[ -f /tmp/ct.txt ] && aios_emit cyclictest /tmp/ct.txt
exit 0
"""


@dataclass
class _Acc:
    before: set[int] = field(default_factory=set)
    cpus: int = 1
    stats: list[tuple[int, float, dict[str, int]]] = field(default_factory=list)  # (idx, t, /proc/stat)
    tasks: dict[int, list] = field(default_factory=dict)  # tid -> [pid, run_ns, wait_ns, slices]
    sched: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    per_sample_top: dict[int, float] = field(default_factory=dict)
    per_sample_live: dict[int, int] = field(default_factory=dict)


def parse_samples(text: str, workload: str = "", tier: Tier = "summary",
                  workload_metrics: dict[str, float] | None = None,
                  wakeup_latency: dict[str, float] | None = None) -> WorkloadProfile:
    """Turn the guest sampler's output into a ``WorkloadProfile`` (only tasks created by the run)."""
    acc = _Acc()
    cur_idx = -1
    for line in text.splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "B" and len(p) > 1 and p[1].isdigit():
            acc.before.add(int(p[1]))
        elif p[0] == "C" and len(p) > 1:
            acc.cpus = int(p[1])
        elif p[0] == "S" and len(p) >= 3:
            cur_idx = int(p[1])
            acc.stats.append((cur_idx, float(p[2]), {}))
        elif p[0] == "P" and len(p) >= 3 and acc.stats:
            acc.stats[-1][2][p[1]] = int(p[2])
        elif p[0] == "T" and len(p) >= 6 and p[2].isdigit():
            tid = int(p[2])
            if tid in acc.before:
                continue
            acc.tasks[tid] = [int(p[1]), int(p[3]), int(p[4]), int(p[5])]
            acc.per_sample_top[cur_idx] = max(acc.per_sample_top.get(cur_idx, 0.0), int(p[3]) / 1e6)
            acc.per_sample_live[cur_idx] = acc.per_sample_live.get(cur_idx, 0) + 1
        elif p[0] == "W" and len(p) >= 4 and p[1].isdigit():
            tid = int(p[1])
            if tid not in acc.before:
                acc.sched[tid][p[2]] = int(float(p[3]))
    tasks = [TaskStats(tid=tid, pid=v[0], runtime_ms=v[1] / 1e6, wait_ms=v[2] / 1e6, timeslices=v[3],
                       voluntary_switches=acc.sched[tid].get("nr_voluntary_switches", 0),
                       involuntary_switches=acc.sched[tid].get("nr_involuntary_switches", 0),
                       wakeups=acc.sched[tid].get("nr_wakeups", 0)) for tid, v in acc.tasks.items()]
    tasks = [t for t in tasks if t.runtime_ms > 0]
    st = acc.stats
    dur = (st[-1][1] - st[0][1]) if len(st) > 1 else 0.0
    ctxt = (st[-1][2].get("ctxt", 0) - st[0][2].get("ctxt", 0)) if len(st) > 1 else 0
    procs = (st[-1][2].get("processes", 0) - st[0][2].get("processes", 0)) if len(st) > 1 else 0
    runnable = [s[2].get("procs_running", 0) for s in st]
    blocked = [s[2].get("procs_blocked", 0) for s in st]
    total_rt = sum(t.runtime_ms for t in tasks)
    vol = sum(t.voluntary_switches for t in tasks)
    inv = sum(t.involuntary_switches for t in tasks)
    trace: list[TraceSample] = []
    if tier == "trace":
        for i, (idx, t, kv) in enumerate(st):
            prev = st[i - 1][2].get("ctxt", kv.get("ctxt", 0)) if i else kv.get("ctxt", 0)
            trace.append(TraceSample(t_s=t - st[0][1], runnable=kv.get("procs_running", 0),
                                     blocked=kv.get("procs_blocked", 0), ctxt_delta=kv.get("ctxt", 0) - prev,
                                     live_tasks=acc.per_sample_live.get(idx, 0),
                                     top_runtime_ms=acc.per_sample_top.get(idx, 0.0)))
    return WorkloadProfile(
        workload=workload, tier=tier, cpus=acc.cpus, duration_s=dur, context_switches=ctxt,
        context_switches_per_s=ctxt / dur if dur else 0.0, processes_created=procs,
        runnable_mean=statistics.fmean(runnable) if runnable else 0.0, runnable_max=max(runnable, default=0),
        blocked_max=max(blocked, default=0), tasks_seen=len(tasks),
        runtime_ms=Distribution.of([t.runtime_ms for t in tasks]),
        avg_burst_ms=Distribution.of([t.avg_burst_ms for t in tasks]),
        wakeups_per_s=sum(t.wakeups for t in tasks) / dur if dur else 0.0,
        voluntary_fraction=vol / (vol + inv) if vol + inv else 0.0,
        short_burst_fraction=sum(t.avg_burst_ms < 2.0 for t in tasks) / len(tasks) if tasks else 0.0,
        longest_task_share=max((t.runtime_ms for t in tasks), default=0.0) / total_rt if total_rt else 0.0,
        top_tasks=sorted(tasks, key=lambda t: -t.runtime_ms)[:10], workload_metrics=workload_metrics or {},
        trace=trace, wakeup_latency_us=wakeup_latency or {})


COLLECTOR_SOURCE = Path(__file__).resolve().parent / "probes" / "task_lifetimes.bpf.c"


def collector_object(setup: Any = None) -> Path | None:
    """The collector compiled for the guest kernel, cached by source and compiler (None if it cannot build)."""
    from .build import compile_bpf
    from .setup import ensure_setup

    setup = setup or ensure_setup(progress=False)
    key = hashlib.sha256(COLLECTOR_SOURCE.read_bytes() + setup.clang.encode() + setup.kernel_release.encode())
    out = Path(setup.cache_dir) / "probes" / f"task_lifetimes-{key.hexdigest()[:16]}.bpf.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    b = compile_bpf(COLLECTOR_SOURCE, tmp, setup=setup)
    if not b.ok:
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(out)
    return out


def profile(workload: str | Workload, tier: Tier = "summary", vm: Any = None, collector: bool = True) -> WorkloadProfile:
    """Run ``workload`` once under the default scheduler in the micro-VM and profile it.

    ``collector``: attach the BPF collector for the measured run (``lifetimes``); skipped, with the
    rest of the profile intact, when it cannot be built or loaded.
    """
    w = get_workload(workload) if isinstance(workload, str) else workload
    if vm is None:
        from .vm import MicroVM

        vm = MicroVM()
    files: dict[str, Any] = dict(guest_files(w))
    files["/aios/wl_cmd.sh"] = w.command + "\n"
    col = collector_object(vm.setup) if collector else None
    if col is not None:
        files["/aios/collector.bpf.o"] = col
    kw = {"tools": True} if (w.guest_tools or tier == "trace") else {}
    res = vm.run(guest_script(w, tier, col is not None), files=files, timeout_s=90 + w.approx_guest_s * 8, **kw)
    if not res.ok or "samples" not in res.blobs:
        raise RuntimeError(f"profiling {w.name} failed: {res.describe_failure()} {res.output[-800:]}")
    try:
        metrics = parse_output(w, res.blobs.get("wl_out", ""))
    except ValueError:
        metrics = {}
    lat: dict[str, float] = {}
    if "cyclictest" in res.blobs:
        from .workloads import _parse_cyclictest

        try:
            lat = _parse_cyclictest(res.blobs["cyclictest"])
        except ValueError:
            lat = {}
    prof = parse_samples(res.blobs["samples"], w.name, tier, metrics, lat)
    if "collector" in res.blobs and "collector_load" not in res.blobs:
        from .bpftool import datasec_values, parse_map_dump

        try:
            prof.lifetimes = TaskLifetimes.from_counters(datasec_values(parse_map_dump(res.blobs["collector"])))
        except (ValueError, TypeError):
            prof.lifetimes = None
    return prof
