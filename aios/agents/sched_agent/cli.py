"""``aios sched optimize``: run the sched-agent on a workload from the command line.

Why it lives with the agent: the toolchain (``aios/sched_ext``) never imports the agent, which is a
layer above it. The top-level CLI (``aios/cli/sched.py``) adds this subcommand next to the toolchain's
own with a single call to ``add_optimize_subcommand(sched_subparsers)``.

    aios sched optimize --workload batch [--goal "…"] [--mode compose|write] [--budget 5]
                        [--budget iterations=6,time=20m,tokens=50000] [--reps 3]
                        [--stress-seconds 60] [--model smollm2] [--deploy] [--json FILE]

Prints one line per step (candidate, verdict, metric vs EEVDF), then the winner with its
improvement and spread, and the cost (wall time, LLM tokens, verification runs).  ``--deploy``
loads the winner on this host only in host mode (root and a sched_ext kernel); it is refused up
front, with the reason, anywhere else.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def parse_budget(text: str) -> dict[str, Any]:
    """``5`` (iterations) or ``iterations=5,time=20m,tokens=50000`` -> Budget fields."""
    text = text.strip()
    if text.isdigit():
        return {"iterations": int(text)}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key in ("iterations", "iters", "i"):
            out["iterations"] = int(value)
        elif key in ("tokens", "t"):
            out["tokens"] = int(value)
        elif key in ("time", "time_s", "wall"):
            m = _DURATION.match(value.strip())
            if not m:
                raise ValueError(f"bad duration {value!r} (use 90, 90s, 20m or 1h)")
            out["time_s"] = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
        else:
            raise ValueError(f"unknown budget key {key!r} (iterations, time, tokens)")
    return out


def add_optimize_subcommand(sched_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``optimize`` to ``aios sched``'s subparsers; returns the new parser."""
    p = sched_subparsers.add_parser(
        "optimize",
        help="let the sched-agent synthesize, verify and measure a scheduler for a workload",
        description="The sched-agent observes the workload in the micro-VM, infers the goal, then proposes, "
        "verifies (all stages) and measures candidate schedulers against EEVDF until gains flatten or the "
        "budget is spent. It keeps EEVDF unless a candidate wins beyond its spread and survives a stress run.",
    )
    p.add_argument(
        "--workload",
        required=True,
        help="a registered guest workload, e.g. batch, schbench, build, batch-sort, cyclictest",
    )
    p.add_argument("--goal", default=None, help="your goal in words; the agent maps it to one it can measure")
    p.add_argument(
        "--mode",
        choices=("compose", "write"),
        default="compose",
        help="compose: building blocks (any model); write: the model writes BPF C (capable model)",
    )
    p.add_argument("--budget", default="5", help="iterations, or iterations=N,time=20m,tokens=N")
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    p.add_argument("--stress-seconds", type=float, default=60.0, help="stress run of the final candidate")
    p.add_argument(
        "--seeds", type=int, default=6, help="repository schedulers screened together in round one"
    )
    p.add_argument(
        "--model", default="smollm2", help="kernel LLM: smollm2, a local model, or openai:URL#MODEL"
    )
    p.add_argument(
        "--deploy",
        action="store_true",
        help="load the winner on this host (host mode: root and a sched_ext kernel only)",
    )
    p.add_argument("--json", dest="json_out", default=None, help="write the full report here")
    p.add_argument("--data-dir", default=None, help="kernel storage directory (default: temporary)")
    p.set_defaults(func=cmd_optimize)
    return p


def cmd_optimize(args: argparse.Namespace) -> int:
    from aios.agents.sched_agent.agent import SchedAgent
    from aios.agents.sched_agent.task import Budget, OptimizeTask
    from aios.kernel.kernel import Kernel
    from aios.sched_ext.tools import SchedToolbox, host_deploy_problem, register_sched_tools
    from aios.sched_ext.workloads import WORKLOADS

    if args.workload not in WORKLOADS:
        print(
            f"aios: error: unknown workload {args.workload!r}; known: {', '.join(sorted(WORKLOADS))}",
            file=sys.stderr,
        )
        return 2
    if args.deploy:
        problem = host_deploy_problem()
        if problem:
            print(f"aios: error: --deploy refused: {problem}", file=sys.stderr)
            return 2
    try:
        budget = Budget(**parse_budget(args.budget))
    except ValueError as exc:
        print(f"aios: error: --budget: {exc}", file=sys.stderr)
        return 2
    task = OptimizeTask(
        workload=args.workload,
        goal=args.goal,
        mode=args.mode,
        budget=budget,
        reps=args.reps,
        stress_s=args.stress_seconds,
        seeds=args.seeds,
        deploy=args.deploy,
    )
    kernel_kw: dict[str, Any] = {"model": args.model}
    if args.data_dir:
        kernel_kw["data_dir"] = Path(args.data_dir)

    def progress(line: str) -> None:
        print(line, flush=True)

    with Kernel(**kernel_kw) as kernel:
        box = SchedToolbox()
        register_sched_tools(kernel, box)
        agent = SchedAgent(progress=progress)
        if args.deploy:
            kernel.modules["access"].set_group(agent.name, "admin")
        print(
            f"sched-agent: optimizing {args.workload} ({args.mode} mode, budget {budget.model_dump()})",
            flush=True,
        )
        run = agent.start(kernel, task)
    if not run.ok:
        print(f"aios: error: the sched-agent failed: {run.error}", file=sys.stderr)
        return 1
    report = run.output
    print_report(report)
    unverified = [r for r in box.loads if not r.verified]
    if unverified:  # cannot happen (the toolbox refuses), but say so loudly if it ever did
        print(f"SAFETY: {len(unverified)} unverified loads recorded", file=sys.stderr)
        return 1
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=str))
        print(f"report written to {args.json_out}")
    return 0


def print_report(report: dict[str, Any]) -> None:
    from aios.agents.sched_agent.report import OptimizeReport

    r = OptimizeReport.model_validate(report)
    print()
    print(r.table())
    print()
    if r.accepted:
        spread = f" ± {r.spread:.1%}" if r.spread is not None else ""
        print(
            f"winner: {r.winner} — {r.metric} {r.improvement:+.1%}{spread} vs EEVDF "
            f"(stress {r.stress.get('seconds', 0):.0f} s: ok)"
            if r.stress
            else f"winner: {r.winner}"
        )
    else:
        print(f"winner: EEVDF (kept the default: no verified candidate beat it) — stop: {r.stop_reason}")
    c = r.cost
    print(
        f"cost: {c.wall_s:.0f} s wall, {c.prompt_tokens + c.completion_tokens} LLM tokens "
        f"({c.llm_calls} calls), {c.verify_runs} verification runs, {c.measure_runs} measurements, "
        f"${c.usd:.2f}"
    )
    if r.deployed is not None:
        print(f"deployed on the host: {r.deployed}")
