"""Compose mode: new sched_ext schedulers assembled from documented building blocks.

Why this exists: a small local model (the embedded SmolLM2) cannot write BPF C that passes the
kernel verifier, but it can pick one option per question from a short, documented menu.  This
module is that menu (a pydantic schema whose every field is a closed set of strings, so the LLM
core's constrained decoding — ``LLMRequest.choices`` — can only ever produce a valid choice) and
the generator that turns a choice into readable scx_simple-style BPF C built on ``aios_scx.h``.

Every combination is a real scheduler, not a template with holes: the generator emits only the
callbacks the choice needs, explains the policy in comments, and keeps every policy
starvation-free (each ordering key is bounded relative to "now" or to the running virtual time,
so no queued task can be overtaken for longer than a bounded window, well inside the sched_ext
watchdog's timeout).  The tests compile every combination with clang on the host and run a
sample through the full staged verifier in the micro-VM.

Policies decide only from what the kernel observes about a task — CPU time it consumed (kept in
task-local storage from ``running``/``stopping``), whether it is waking up, its weight (nice
level) and the CPU it last ran on — never from process or file names.

Public API::

    Composition(ordering=..., dispatch=..., slice_us=..., wakeup_boost=..., idle=...)
    all_compositions() -> list[Composition]
    generate(comp) -> GeneratedScheduler        # .source, .name, .description, .tunables
    block_catalogue() -> str                    # the documented menu, for prompts and --help
    field_choices() -> dict[str, list[str]]     # per field, the strings constrained decoding allows
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Ordering(StrEnum):
    """Which runnable task runs next (the key the dispatch queue is sorted by)."""

    ARRIVAL = "arrival"
    VTIME = "vtime"
    SHORTEST_RUNTIME = "shortest_runtime"
    LONGEST_RUNTIME = "longest_runtime"
    PRIORITY = "priority"


class Dispatch(StrEnum):
    """Where runnable tasks wait: one queue shared by all CPUs, or one queue per CPU."""

    GLOBAL = "global"
    PER_CPU = "per_cpu"


class WakeupBoost(StrEnum):
    """What a task gets when it wakes up (a sign of interactive / latency-sensitive work)."""

    NONE = "none"
    CREDIT = "credit"
    PREEMPT = "preempt"


class IdleSelection(StrEnum):
    """How a waking task picks a CPU (ops.select_cpu)."""

    KERNEL_DEFAULT = "kernel_default"
    PREV_CPU = "prev_cpu"
    ANY_IDLE = "any_idle"


SliceUs = Literal[1000, 2000, 5000, 10000, 20000]
SLICE_CHOICES_US: tuple[int, ...] = (1000, 2000, 5000, 10000, 20000)

#: What each option means, in words a model (and a person) can choose from.  The same text is
#: written into the generated source's header comment.
BLOCK_DOCS: dict[str, dict[str, str]] = {
    "ordering": {
        Ordering.ARRIVAL: "first come, first served: tasks run in the order they were queued; a task "
        "whose slice ran out goes to the back (round robin)",
        Ordering.VTIME: "weighted fair share: the task furthest behind its fair share of CPU (virtual "
        "time = CPU used / weight) runs next; sleepers keep at most one slice of credit",
        Ordering.SHORTEST_RUNTIME: "shortest observed runtime first: tasks that have used little CPU so "
        "far run before tasks that have proven long (least attained service); good for mean "
        "completion time of batch jobs",
        Ordering.LONGEST_RUNTIME: "longest observed runtime first: tasks that have already used much CPU "
        "run first, so the long job starts early and finishes with the rest; good for makespan",
        Ordering.PRIORITY: "priority by weight: earliest deadline, where a task's deadline is its queue "
        "time plus slice * 100 / weight, so lower-nice (heavier) tasks go first",
    },
    "dispatch": {
        Dispatch.GLOBAL: "one shared queue: any CPU takes the best task (best balance, shared lock)",
        Dispatch.PER_CPU: "one queue per CPU: tasks queue on the CPU they will run on (cache locality); "
        "an idle CPU steals from the others",
    },
    "slice_us": {str(s): f"time slice of {s // 1000} ms" for s in SLICE_CHOICES_US},
    "wakeup_boost": {
        WakeupBoost.NONE: "no special treatment for waking tasks",
        WakeupBoost.CREDIT: "a waking task is ordered as if it had been waiting one slice longer",
        WakeupBoost.PREEMPT: "credit as above, and the waking task preempts the task running on its "
        "CPU when no idle CPU was found (lowest wake-up latency)",
    },
    "idle": {
        IdleSelection.KERNEL_DEFAULT: "the kernel's idle-CPU search (idle core first, then the previous "
        "CPU, then any idle CPU nearby); a task that finds one runs there at once",
        IdleSelection.PREV_CPU: "stick to the previous CPU: run at once only if it is idle, else queue "
        "(keeps caches warm)",
        IdleSelection.ANY_IDLE: "previous CPU if idle, else the first idle CPU anywhere (spread work "
        "for throughput)",
    },
}

_ABBREV = {
    Ordering.ARRIVAL: "fifo",
    Ordering.VTIME: "vt",
    Ordering.SHORTEST_RUNTIME: "srt",
    Ordering.LONGEST_RUNTIME: "lrt",
    Ordering.PRIORITY: "prio",
    Dispatch.GLOBAL: "g",
    Dispatch.PER_CPU: "pc",
    WakeupBoost.NONE: "nb",
    WakeupBoost.CREDIT: "wc",
    WakeupBoost.PREEMPT: "wp",
    IdleSelection.KERNEL_DEFAULT: "dfl",
    IdleSelection.PREV_CPU: "prev",
    IdleSelection.ANY_IDLE: "any",
}


class Composition(BaseModel):
    """One choice of building blocks: the structured output the LLM produces in compose mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ordering: Ordering = Field(description="which runnable task runs next")
    dispatch: Dispatch = Field(Dispatch.GLOBAL, description="shared queue or per-CPU queues")
    slice_us: SliceUs = Field(5000, description="time slice in microseconds")
    wakeup_boost: WakeupBoost = Field(WakeupBoost.NONE, description="treatment of waking tasks")
    idle: IdleSelection = Field(IdleSelection.KERNEL_DEFAULT, description="idle-CPU selection")

    @property
    def name(self) -> str:
        """Scheduler name (also the sched_ext ops name): short, unique per combination."""
        parts = [_ABBREV[self.ordering], _ABBREV[self.dispatch], f"s{self.slice_us // 1000}"]
        parts += [_ABBREV[self.wakeup_boost], _ABBREV[self.idle]]
        return "cmp_" + "_".join(parts)

    def describe(self) -> str:
        """One line per block, in the words of ``BLOCK_DOCS``."""
        return "\n".join(
            f"{k}: {v} — {BLOCK_DOCS[k][str(v)]}" for k, v in self.model_dump(mode="json").items()
        )


def field_choices() -> dict[str, list[str]]:
    """For each schema field, the exact strings constrained decoding may produce (in order)."""
    return {k: list(v) for k, v in BLOCK_DOCS.items()}


def composition_from_choices(choices: dict[str, str]) -> Composition:
    """Build a ``Composition`` from per-field strings (as returned by constrained decoding)."""
    data: dict[str, Any] = dict(choices)
    if "slice_us" in data:
        data["slice_us"] = int(data["slice_us"])
    return Composition.model_validate(data)


def all_compositions() -> list[Composition]:
    """Every valid combination (5 orderings x 2 dispatch x 5 slices x 3 boosts x 3 idle = 450)."""
    return [
        Composition(ordering=o, dispatch=d, slice_us=s, wakeup_boost=w, idle=i)
        for o, d, s, w, i in itertools.product(
            Ordering, Dispatch, SLICE_CHOICES_US, WakeupBoost, IdleSelection
        )
    ]


def structural_compositions(slice_us: int = 5000) -> list[Composition]:
    """The 90 combinations that differ in code; the slice only changes a tunable's initial value."""
    return [c for c in all_compositions() if c.slice_us == slice_us]


def block_catalogue() -> str:
    """The documented menu of building blocks (for prompts, ``--help`` and the README)."""
    lines = []
    for key, opts in BLOCK_DOCS.items():
        lines.append(f"{key}:")
        lines += [f"  - {name}: {doc}" for name, doc in opts.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ generator


@dataclass
class GeneratedScheduler:
    """A generated scheduler: C source plus what the repository records about it."""

    composition: Composition
    name: str
    source: str
    description: str
    tunables: dict[str, int] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:12]

    @property
    def filename(self) -> str:
        return f"{self.name}.bpf.c"


#: Bounds of the runtime-based keys (ns): how far a proven-long (or -short) task can be pushed
#: back, and the most any queued task can be overtaken; both well under the 5 s ``timeout_ms``.
RUNTIME_CAP_NS = 1_000_000_000
STARVE_NS = 2_000_000_000
MAX_CPUS = 64


def _needs_task_ctx(c: Composition) -> bool:
    return c.ordering in (Ordering.SHORTEST_RUNTIME, Ordering.LONGEST_RUNTIME)


def _key_code(c: Composition) -> list[str]:
    """C lines computing ``key`` (smaller runs first) for the chosen ordering."""
    if c.ordering is Ordering.VTIME:
        return [
            "\t/* Weighted fair share: order by virtual time; a sleeper keeps at most one",
            "\t * slice of credit so it cannot monopolise the CPU when it wakes. */",
            "\tu64 key = p->scx.dsq_vtime;",
            "\tif (before(key, vtime_now - slice_ns))",
            "\t\tkey = vtime_now - slice_ns;",
        ]
    lines = ["\tu64 now = scx_bpf_now();", "\tu64 key = now;", ""]
    if c.ordering is Ordering.ARRIVAL:
        lines += [
            "\t/* First come, first served: queue order is enqueue time, so a task whose",
            "\t * slice ran out goes to the back (round robin). */",
        ]
    elif c.ordering is Ordering.PRIORITY:
        lines += [
            "\t/* Priority by weight: deadline = enqueue time + slice * 100 / weight, so a",
            "\t * heavier (lower nice) task gets an earlier deadline. */",
            "\tu64 w = p->scx.weight ? p->scx.weight : 1;",
            "",
            "\tkey = now + slice_ns * 100 / w;",
        ]
    else:
        lines.insert(0, "\tstruct task_ctx *tc = ctx_of(p);")
        shortest = c.ordering is Ordering.SHORTEST_RUNTIME
        lines += [
            "\t/* Observed runtime (CPU time used so far, capped at runtime_cap_ns) shifts the",
            "\t * key: "
            + (
                "tasks that used more CPU wait longer (shortest first)."
                if shortest
                else "tasks that used more CPU go earlier (longest first)."
            )
            + " */",
            "\tif (tc) {",
            "\t\tu64 rt = tc->runtime < runtime_cap_ns ? tc->runtime : runtime_cap_ns;",
            "",
            "\t\tkey = tc->runnable_at + " + ("rt;" if shortest else "(runtime_cap_ns - rt);"),
            "\t}",
        ]
    lines += [
        "\t/* Starvation guard: no key is older than now - starve_ns, so a queued task is",
        "\t * overtaken for at most about starve_ns (below the watchdog timeout). */",
        "\tif (before(key, now - starve_ns))",
        "\t\tkey = now - starve_ns;",
    ]
    return lines


def _dsq_expr(c: Composition) -> str:
    return "SHARED_DSQ" if c.dispatch is Dispatch.GLOBAL else "cpu_dsq(scx_bpf_task_cpu(p))"


def generate(c: Composition) -> GeneratedScheduler:
    """Turn a composition into BPF C (scx_simple style) that includes ``aios_scx.h``."""
    n = c.name
    slice_ns = c.slice_us * 1000
    per_cpu = c.dispatch is Dispatch.PER_CPU
    vtime = c.ordering is Ordering.VTIME
    task_ctx = _needs_task_ctx(c)
    boost = c.wakeup_boost is not WakeupBoost.NONE
    tunables: dict[str, int] = {"slice_ns": slice_ns}
    if boost:
        tunables["boost_ns"] = slice_ns
    if c.ordering in (Ordering.SHORTEST_RUNTIME, Ordering.LONGEST_RUNTIME):
        tunables["runtime_cap_ns"] = RUNTIME_CAP_NS
    if not vtime:
        tunables["starve_ns"] = STARVE_NS

    doc = [f" * {k:<12} {v}: {BLOCK_DOCS[k][str(v)]}" for k, v in c.model_dump(mode="json").items()]
    out: list[str] = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        "/*",
        f" * {n} - composed by aios from documented building blocks.",
        " *",
        " * Policy:",
        *doc,
        " *",
        " * Decisions use only what the kernel observes about a task (CPU time used, wake-ups,",
        " * weight, last CPU), never its name.  Every ordering key is bounded, so no queued task",
        " * is overtaken for longer than a bounded window (no stalls for the watchdog to catch).",
        " *",
        " * Tunables (.rodata):",
        *[f" *   {k:<15} default {v}" for k, v in tunables.items()],
        " */",
        '#include "aios_scx.h"',
        "",
        'char _license[] SEC("license") = "GPL";',
        "",
        f"const volatile u64 slice_ns = {slice_ns}ULL;",
    ]
    if boost:
        out.append(f"const volatile u64 boost_ns = {slice_ns}ULL; /* credit given to a waking task */")
    if "runtime_cap_ns" in tunables:
        out.append(f"const volatile u64 runtime_cap_ns = {RUNTIME_CAP_NS}ULL; /* most runtime counted */")
    if not vtime:
        out.append(f"const volatile u64 starve_ns = {STARVE_NS}ULL; /* bound on being overtaken */")
    out.append("")
    if per_cpu:
        out += [
            f"#define MAX_CPUS {MAX_CPUS} /* per-CPU queues are DSQ ids 0..MAX_CPUS-1 */",
            "",
            "/* Counters read by the harness from .bss. */",
            "u64 nr_direct, nr_queued, nr_stolen;",
        ]
    else:
        out += [
            "#define SHARED_DSQ 0",
            "",
            "/* Counters read by the harness from .bss. */",
            "u64 nr_direct, nr_queued;",
        ]
    if boost:
        out.append("u64 nr_boosted;")
    out.append("")
    if vtime:
        out += ["u64 vtime_now; /* the largest virtual time seen running */", ""]
    out += [
        "/* a is before b, robust to wrap-around */",
        "static __always_inline bool before(u64 a, u64 b)",
        "{",
        "\treturn (s64)(a - b) < 0;",
        "}",
        "",
    ]
    if task_ctx:
        out += [
            "/* What the scheduler observes per task, in task-local storage. */",
            "struct task_ctx {",
            "\tu64 runtime;     /* total CPU time observed */",
            "\tu64 runnable_at; /* when the current burst became runnable */",
            "\tu64 running_at;  /* when it last got a CPU */",
            "};",
            "",
            "struct {",
            "\t__uint(type, BPF_MAP_TYPE_TASK_STORAGE);",
            "\t__uint(map_flags, BPF_F_NO_PREALLOC);",
            "\t__type(key, int);",
            "\t__type(value, struct task_ctx);",
            '} task_ctxs SEC(".maps");',
            "",
            "static struct task_ctx *ctx_of(struct task_struct *p)",
            "{",
            "\treturn bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);",
            "}",
            "",
        ]
    if per_cpu:
        out += [
            "/* Number of per-CPU queues actually created (CPUs beyond MAX_CPUS share them). */",
            "static __always_inline u32 nr_queues(void)",
            "{",
            "\tu32 n = scx_bpf_nr_cpu_ids();",
            "",
            "\treturn n < MAX_CPUS ? n : MAX_CPUS;",
            "}",
            "",
            "static __always_inline u64 cpu_dsq(s32 cpu)",
            "{",
            "\tu32 n = nr_queues();",
            "",
            "\treturn cpu >= 0 && n ? (u32)cpu % n : 0;",
            "}",
            "",
        ]

    # -- select_cpu --------------------------------------------------------------------------
    out.append(f"s32 BPF_STRUCT_OPS({n}_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)")
    out.append("{")
    if c.idle is IdleSelection.KERNEL_DEFAULT:
        out += [
            "\tbool is_idle = false;",
            "\ts32 cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);",
            "",
            "\t/* The kernel found an idle CPU: run there at once, skipping the queue. */",
            "\tif (is_idle) {",
            "\t\tscx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);",
            "\t\t__sync_fetch_and_add(&nr_direct, 1);",
            "\t}",
            "\treturn cpu;",
        ]
    elif c.idle is IdleSelection.PREV_CPU:
        out += [
            "\t/* Stay on the previous CPU (warm caches); skip the queue only if it is idle. */",
            "\tif (scx_bpf_test_and_clear_cpu_idle(prev_cpu)) {",
            "\t\tscx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);",
            "\t\t__sync_fetch_and_add(&nr_direct, 1);",
            "\t}",
            "\treturn prev_cpu;",
        ]
    else:
        out += [
            "\ts32 cpu = prev_cpu;",
            "",
            "\t/* Previous CPU if idle, else the first idle CPU the task may use. */",
            "\tif (!scx_bpf_test_and_clear_cpu_idle(prev_cpu))",
            "\t\tcpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);",
            "\tif (cpu >= 0) {",
            "\t\tscx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);",
            "\t\t__sync_fetch_and_add(&nr_direct, 1);",
            "\t\treturn cpu;",
            "\t}",
            "\treturn prev_cpu;",
        ]
    out += ["}", ""]

    # -- enqueue -----------------------------------------------------------------------------
    out.append(f"void BPF_STRUCT_OPS({n}_enqueue, struct task_struct *p, u64 enq_flags)")
    out.append("{")
    out += _key_code(c)
    if boost:
        out += [
            "",
            "\t/* Wake-up credit: a task that just woke (likely latency-sensitive) is ordered",
            "\t * as if it had waited boost_ns longer. */",
            "\tif (enq_flags & SCX_ENQ_WAKEUP) {",
            "\t\tkey -= boost_ns;",
            "\t\t__sync_fetch_and_add(&nr_boosted, 1);",
            "\t}",
        ]
    out += [
        "",
        f"\tscx_bpf_dsq_insert_vtime(p, {_dsq_expr(c)}, slice_ns, key, enq_flags);",
        "\t__sync_fetch_and_add(&nr_queued, 1);",
    ]
    if c.wakeup_boost is WakeupBoost.PREEMPT:
        out += [
            "",
            "\t/* No idle CPU took it (select_cpu would have skipped the queue): preempt the",
            "\t * task running on the waking task's CPU so it is served within microseconds. */",
            "\tif (enq_flags & SCX_ENQ_WAKEUP)",
            "\t\tscx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_PREEMPT);",
        ]
    out += ["}", ""]

    # -- dispatch ----------------------------------------------------------------------------
    out.append(f"void BPF_STRUCT_OPS({n}_dispatch, s32 cpu, struct task_struct *prev)")
    out.append("{")
    if per_cpu:
        out += [
            "\tu32 n = nr_queues();",
            "",
            "\t/* Own queue first (locality) ... */",
            "\tif (scx_bpf_dsq_move_to_local(cpu_dsq(cpu)))",
            "\t\treturn;",
            "\t/* ... then steal from the other CPUs' queues (bounded loop). */",
            "\tfor (u32 i = 1; i < MAX_CPUS; i++) {",
            "\t\tif (i >= n)",
            "\t\t\tbreak;",
            "\t\tif (scx_bpf_dsq_move_to_local(cpu_dsq(cpu + i))) {",
            "\t\t\t__sync_fetch_and_add(&nr_stolen, 1);",
            "\t\t\treturn;",
            "\t\t}",
            "\t}",
        ]
    else:
        out.append("\tscx_bpf_dsq_move_to_local(SHARED_DSQ);")
    out += ["}", ""]

    # -- accounting callbacks ------------------------------------------------------------------
    if task_ctx:
        out += [
            f"void BPF_STRUCT_OPS({n}_runnable, struct task_struct *p, u64 enq_flags)",
            "{",
            "\tstruct task_ctx *tc = ctx_of(p);",
            "",
            "\tif (tc)",
            "\t\ttc->runnable_at = scx_bpf_now();",
            "}",
            "",
            f"void BPF_STRUCT_OPS({n}_running, struct task_struct *p)",
            "{",
            "\tstruct task_ctx *tc = ctx_of(p);",
            "",
            "\tif (tc)",
            "\t\ttc->running_at = scx_bpf_now();",
            "}",
            "",
            f"void BPF_STRUCT_OPS({n}_stopping, struct task_struct *p, bool runnable)",
            "{",
            "\tstruct task_ctx *tc = ctx_of(p);",
            "",
            "\t/* Observed runtime: CPU time of the burst that just ended. */",
            "\tif (tc && tc->running_at)",
            "\t\ttc->runtime += scx_bpf_now() - tc->running_at;",
            "}",
            "",
        ]
    if vtime:
        out += [
            f"void BPF_STRUCT_OPS({n}_running, struct task_struct *p)",
            "{",
            "\t/* Global virtual clock: the largest virtual time seen running. */",
            "\tif (before(vtime_now, p->scx.dsq_vtime))",
            "\t\tvtime_now = p->scx.dsq_vtime;",
            "}",
            "",
            f"void BPF_STRUCT_OPS({n}_stopping, struct task_struct *p, bool runnable)",
            "{",
            "\t/* Charge the CPU time used, scaled by 100 / weight (nice level). */",
            "\tu64 used = p->scx.slice < slice_ns ? slice_ns - p->scx.slice : 0;",
            "\tu64 w = p->scx.weight ? p->scx.weight : 1;",
            "",
            "\tp->scx.dsq_vtime += used * 100 / w;",
            "}",
            "",
            f"void BPF_STRUCT_OPS({n}_enable, struct task_struct *p)",
            "{",
            "\t/* A new task starts at the current virtual time. */",
            "\tp->scx.dsq_vtime = vtime_now;",
            "}",
            "",
        ]

    # -- init / exit ---------------------------------------------------------------------------
    out.append(f"s32 BPF_STRUCT_OPS_SLEEPABLE({n}_init)")
    out.append("{")
    if per_cpu:
        out += [
            "\tu32 n = nr_queues();",
            "",
            "\t/* One vtime-ordered queue per CPU. */",
            "\tfor (u32 i = 0; i < MAX_CPUS; i++) {",
            "\t\tif (i >= n)",
            "\t\t\tbreak;",
            "\t\ts32 ret = scx_bpf_create_dsq(i, -1);",
            "",
            "\t\tif (ret)",
            "\t\t\treturn ret;",
            "\t}",
            "\treturn 0;",
        ]
    else:
        out.append("\treturn scx_bpf_create_dsq(SHARED_DSQ, -1);")
    out += ["}", "", f"void BPF_STRUCT_OPS({n}_exit, struct scx_exit_info *ei)", "{", "}", ""]

    ops = ["select_cpu", "enqueue", "dispatch"]
    if task_ctx:
        ops += ["runnable", "running", "stopping"]
    if vtime:
        ops += ["running", "stopping", "enable"]
    ops += ["init", "exit"]
    out += ['SEC(".struct_ops.link")', f"struct sched_ext_ops {n}_ops = {{"]
    out += [f"\t.{op} = (void *){n}_{op}," for op in ops]
    out += ["\t.timeout_ms = 5000,", f'\t.name = "{n}",', "};", ""]

    tags = ["composed", str(c.ordering), str(c.dispatch), f"wakeup_{c.wakeup_boost}", f"idle_{c.idle}"]
    description = f"Composed scheduler {n}. " + "; ".join(
        f"{k} {v}: {BLOCK_DOCS[k][str(v)]}" for k, v in c.model_dump(mode="json").items()
    )
    return GeneratedScheduler(
        composition=c, name=n, source="\n".join(out), description=description, tunables=tunables, tags=tags
    )
