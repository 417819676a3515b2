"""``aios run``, ``aios demo``, ``aios list`` and ``aios metrics``: agents on one kernel, and what is left.

Every run writes its metrics to ``<cache>/runs/last.json`` so ``aios metrics`` can show them later.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aios.cache import cache_root
from aios.cli.base import UsageError, format_table, kernel_options, load_llm, make_kernel

DEMO_AGENTS = ("math", "narrative", "recommendation", "travel")


def _build_agents(names: Sequence[str], scale: float):
    from aios.agents import AGENTS

    agents, seen = [], {}
    for name in names:
        if name not in AGENTS:
            raise UsageError(f"unknown agent {name!r} (choose from: {', '.join(AGENTS)})")
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        agents.append(AGENTS[name](label, scale=scale))
    return agents


def _run_with_progress(kernel, agents_and_tasks, quiet: bool):
    """Run agents concurrently with a progress bar (agents finished, LLM calls done, tokens)."""
    from tqdm.auto import tqdm

    from aios.sdk.agent import run_all

    bar = tqdm(total=len(agents_and_tasks), desc="agents", unit="agent", disable=quiet, leave=False)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            llm = kernel.history(kind="llm")
            done = [s for s in llm if s.finished]
            toks = sum((s.result.completion_tokens if s.result is not None else 0) for s in done)
            bar.set_postfix(llm_calls=f"{len(done)}/{len(llm)}", tokens=toks, refresh=False)
            bar.n = len(finished)
            bar.refresh()

    finished: set[str] = set()
    wrapped = []
    for agent, task in agents_and_tasks:
        original = agent.run

        def run(t, _orig=original, _name=agent.name):
            try:
                return _orig(t)
            finally:
                finished.add(_name)

        agent.run = run  # instance attribute: only this run's copy is wrapped
        wrapped.append((agent, task))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        runs = run_all(kernel, wrapped)
    finally:
        stop.set()
        watcher.join()
        bar.close()
    return runs, time.perf_counter() - t0


def _summary(output: Any) -> str:
    if isinstance(output, dict):
        for key in ("summary", "title", "answer", "recommendation"):
            if output.get(key):
                return " ".join(str(output[key]).split())[:100]
    return " ".join(str(output).split())[:100]


def _agent_rows(runs) -> list[list[Any]]:
    rows = []
    for r in runs:
        llm = [s for s in r.syscalls if s.get("kind") == "llm"]
        rows.append(
            [
                r.agent,
                len(llm),
                sum(s.get("completion_tokens", 0) or 0 for s in llm),
                sum(s.get("preemptions", 0) or 0 for s in llm),
                r.waiting_time,
                r.turnaround_time,
                "ok" if r.ok else "FAILED",
            ]
        )
    return rows


AGENT_HEADERS = ["agent", "LLM calls", "tokens", "preemptions", "waiting (s)", "turnaround (s)", "status"]


def _save_metrics(kernel, runs, wall: float, cache_dir: str | None, path: str | None) -> Path:
    record = {
        "time": time.time(),
        "config": json.loads(kernel.config.model_dump_json()),
        "wall_time": wall,
        "agents": [json.loads(r.model_dump_json()) for r in runs],
        "kernel": kernel.metrics(),
    }
    out = Path(path) if path else cache_root(cache_dir) / "runs" / "last.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))
    return out


def _print_metrics(record: dict[str, Any]) -> None:
    cfg = record.get("config", {})
    print(
        f"model {cfg.get('model')}  scheduler {cfg.get('scheduler')}  quantum {cfg.get('quantum')}  "
        f"batch {cfg.get('max_batch_size')}  wall {record.get('wall_time', 0):.1f}s"
    )
    rows = []
    for a in record.get("agents", []):
        llm = [s for s in a.get("syscalls", []) if s.get("kind") == "llm"]
        rows.append(
            [
                a["agent"],
                len(llm),
                sum(s.get("completion_tokens", 0) or 0 for s in llm),
                sum(s.get("preemptions", 0) or 0 for s in llm),
                sum(s.get("waiting_time") or 0.0 for s in a.get("syscalls", [])),
                a["finished_at"] - a["started_at"],
                "ok" if a.get("error") is None else "FAILED",
            ]
        )
    print(format_table(AGENT_HEADERS, rows))
    calls = record.get("kernel", {}).get("syscalls", [])
    if calls:
        print()
        print(
            format_table(
                [
                    "syscall",
                    "agent",
                    "kind",
                    "status",
                    "waiting (s)",
                    "turnaround (s)",
                    "tokens",
                    "preemptions",
                ],
                [
                    [
                        s["id"],
                        s["agent"],
                        s["kind"],
                        s["status"],
                        s.get("waiting_time") or 0.0,
                        s.get("turnaround_time") or 0.0,
                        s.get("completion_tokens", ""),
                        s.get("preemptions", ""),
                    ]
                    for s in calls
                ],
            )
        )


def cmd_run(args: argparse.Namespace) -> int:
    agents = _build_agents(args.agents, args.scale)
    tasks = args.task or []
    if len(tasks) > 1 and len(tasks) != len(agents):
        raise UsageError(f"give one --task for all agents or one per agent ({len(agents)}), not {len(tasks)}")
    per_agent = tasks * len(agents) if len(tasks) == 1 else tasks or [None] * len(agents)
    kernel = make_kernel(args)
    try:
        load_llm(kernel, args.quiet)
        runs, wall = _run_with_progress(kernel, list(zip(agents, per_agent, strict=True)), args.quiet)
        path = _save_metrics(kernel, runs, wall, args.cache_dir, args.metrics_out)
    finally:
        kernel.shutdown()
    if args.json:
        print(json.dumps([json.loads(r.model_dump_json()) for r in runs], indent=1, default=str))
    else:
        for r in runs:
            if r.ok:
                print(f"== {r.agent}: {_summary(r.output)}")
                if args.verbose:
                    print(json.dumps(r.output, indent=1, default=str))
        if args.metrics:
            print()
            _print_metrics(json.loads(path.read_text()))
    failed = [r for r in runs if not r.ok]
    if failed:
        first = failed[0]
        msg = (first.error or "").strip().splitlines()[0]
        raise UsageError(f"agent {first.agent!r} failed: {msg}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: several agents at once through one kernel, then a timing table."""
    agents = _build_agents(args.agents or DEMO_AGENTS, args.scale)
    kernel = make_kernel(args)
    try:
        print(
            f"aios demo: {len(agents)} agents ({', '.join(a.name for a in agents)}) share one kernel "
            f"on {args.model} (scheduler {args.scheduler}, quantum {args.quantum}, batch {args.max_batch_size})",
            flush=True,
        )
        load_llm(kernel, args.quiet)
        runs, wall = _run_with_progress(kernel, [(a, None) for a in agents], args.quiet)
        _save_metrics(kernel, runs, wall, args.cache_dir, None)
    finally:
        kernel.shutdown()
    print()
    for r in runs:
        if r.ok:
            print(f"== {r.agent}: {_summary(r.output)}")
        else:
            print(f"== {r.agent}: FAILED: {(r.error or '').splitlines()[0]}")
    print()
    print(format_table(AGENT_HEADERS, _agent_rows(runs)))
    tokens = sum(row[2] for row in _agent_rows(runs))
    serial = sum(r.turnaround_time for r in runs)
    print(
        f"\n{len(runs)} agents, {tokens} tokens in {wall:.1f}s wall ({tokens / max(wall, 1e-9):.1f} tok/s); "
        f"the agents' turnarounds add up to {serial:.1f}s: they ran at the same time, batched in one model."
    )
    failed = [r for r in runs if not r.ok]
    if failed:
        raise UsageError(
            f"agent {failed[0].agent!r} failed: {(failed[0].error or '').strip().splitlines()[0]}"
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "agents":
        from aios.agents import AGENTS

        print(format_table(["agent", "what it does"], [[n, c.description] for n, c in AGENTS.items()]))
    elif args.what == "models":
        rows = []
        try:
            from aios.kernel.llm import EMBEDDED_MODELS

            models_dir = cache_root(args.cache_dir) / "models"
            for name, (dist, rel) in EMBEDDED_MODELS.items():
                converted = (models_dir / name / "config.json").is_file()
                rows.append(
                    [name, f"embedded ({dist}: {Path(rel).name})", "cached" if converted else "converts once"]
                )
            if models_dir.is_dir():
                for d in sorted(models_dir.iterdir()):
                    if d.name not in EMBEDDED_MODELS and (d / "config.json").is_file():
                        rows.append([str(d), "converted GGUF", "cached"])
        except ImportError:
            rows.append(["smollm2", "embedded", "engine not installed"])
        rows.append(["<path or hub name>", "any transformers causal LM", "hub needs internet"])
        rows.append(["openai:<base_url>#<model>", "OpenAI-compatible server (vLLM, SGLang, ...)", "remote"])
        print(format_table(["model", "kind", "state"], rows))
    elif args.what == "tools":
        try:
            from aios.kernel.tools import ToolManager, install_builtins
        except ImportError:
            raise UsageError("the tool manager (aios.kernel.tools) is not installed in this build") from None
        tm = ToolManager()
        install_builtins(tm)
        rows = []
        for schema in tm.list("cli"):
            fn = schema.get("function", schema)
            rows.append([fn.get("name"), " ".join(str(fn.get("description", "")).split())[:90]])
        print(format_table(["tool", "what it does"], rows))
        print("(built-in tools; agents and scripts add their own with kernel.modules['tools'].register(fn))")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else cache_root(args.cache_dir) / "runs" / "last.json"
    if not path.is_file():
        raise UsageError(f"no metrics at {path}: run `aios run ...` or `aios demo` first")
    record = json.loads(path.read_text())
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        _print_metrics(record)
    return 0



def add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run one or more agents concurrently on one kernel")
    p.add_argument("agents", nargs="+", metavar="AGENT", help="agent names (see `aios list agents`)")
    p.add_argument("--task", action="append", help="the task (once for all agents, or once per agent)")
    kernel_options(p)
    p.add_argument("--metrics", action="store_true", help="print per-agent and per-syscall metrics")
    p.add_argument("--metrics-out", default=None, help="also write the metrics JSON here")
    p.add_argument("--json", action="store_true", help="print the agents' outputs as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print each agent's full output")
    p.set_defaults(func=cmd_run)


def add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="several agents chat concurrently through the kernel, then a timing table"
    )
    p.add_argument("--agents", nargs="+", metavar="AGENT", help=f"default: {' '.join(DEMO_AGENTS)}")
    kernel_options(p, scheduler="rr", quantum=8)
    p.set_defaults(func=cmd_demo)


def add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list models, tools or agents")
    p.add_argument("what", choices=("models", "tools", "agents"))
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_list)


def add_metrics(sub: Any) -> None:
    p = sub.add_parser("metrics", help="show the metrics of the last run")
    p.add_argument("file", nargs="?", help="a metrics JSON (default: the last run's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_metrics)
