"""``aios sched …`` subcommands of the sched_ext toolchain.

Why a separate module: the top-level CLI (``aios/cli/sched.py``) only calls
``add_subcommands(subparsers)``; everything heavy (qemu, clang, the
measurement code) is imported when a subcommand runs.

    aios sched setup [--refresh] [--cache-dir DIR]
    aios sched verify FILE.bpf.c [FILE.bpf.c …] [-I DIR] [--set NAME=VALUE] [--json] [--watchdog-ms N]
                      [--stop-after static]
    aios sched bench FILE.bpf.c --workload NAME [--reps N] [-I DIR] [--set NAME=VALUE] [--json]
    aios sched examples                                # the kernel's own example schedulers (from set-up)
    aios sched probe                                   # boot once, print what the guest sees

Exit status: 0 when everything passed, 1 when a scheduler was rejected or a
run failed, 2 for usage/setup errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def _cache_env(args: argparse.Namespace) -> None:
    if getattr(args, "cache_dir", None):
        os.environ["AIOS_CACHE_DIR"] = args.cache_dir


def cmd_setup(args: argparse.Namespace) -> int:
    from .setup import SetupError, ensure_setup

    _cache_env(args)
    t0 = time.monotonic()
    try:
        info = ensure_setup(progress=not args.quiet, refresh=args.refresh, retry_sources=True)
    except SetupError as e:
        print(f"aios sched setup: {e}", file=sys.stderr)
        return 2
    print(info.summary())
    print(f"ready in {time.monotonic() - t0:.1f}s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .setup import SetupError, ensure_setup
    from .verifier import verify_many

    _cache_env(args)
    try:
        setup = ensure_setup(progress=not args.json)
    except SetupError as e:
        print(f"aios sched verify: {e}", file=sys.stderr)
        return 2
    try:
        overrides = _overrides(args.set)
    except ValueError as e:
        print(f"aios sched verify: {e}", file=sys.stderr)
        return 2
    results = verify_many(args.files, setup=setup, watchdog_ms=args.watchdog_ms, stop_after=args.stop_after,
                          include_dirs=args.include, overrides=overrides)
    if args.json:
        print(json.dumps([json.loads(r.model_dump_json()) for r in results], indent=2))
    else:
        for r in results:
            print(r.report())
    return 0 if all(r.ok for r in results) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    _cache_env(args)
    try:
        from .measure import measure  # written alongside; imported lazily on purpose
    except ImportError as e:
        print(f"aios sched bench: the measurement module is not available ({e})", file=sys.stderr)
        return 2
    from .setup import SetupError

    try:
        res: Any = measure(args.file, args.workload, args.reps, include_dirs=args.include,
                           overrides=_overrides(args.set))
    except SetupError as e:
        print(f"aios sched bench: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"aios sched bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(res.model_dump_json(indent=2) if hasattr(res, "model_dump_json") else json.dumps(res, default=str))
    else:
        print(res.summary() if hasattr(res, "summary") else res)
    return 0 if getattr(res, "ok", True) else 1


def _overrides(pairs: list[str] | None) -> dict[str, int]:
    """``["nr_cpus=4", "slice_ns=0x100"]`` → ``{"nr_cpus": 4, "slice_ns": 256}``."""
    out: dict[str, int] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--set wants NAME=VALUE, got {pair!r}")
        try:
            out[name] = int(value, 0)
        except ValueError:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--set {name}: {value!r} is not an integer") from None
            out[name] = int(value.lower() == "true")
    return out


def cmd_examples(args: argparse.Namespace) -> int:
    from .setup import SetupError, ensure_setup

    _cache_env(args)
    try:
        info = ensure_setup(progress=False)
    except SetupError as e:
        print(f"aios sched examples: {e}", file=sys.stderr)
        return 2
    if info.scx_dir is None or info.scx_include is None:
        print(f"aios sched examples: the kernel's sched_ext tree is missing: {info.scx_missing or 'not fetched'}; "
              "run `aios sched setup`", file=sys.stderr)
        return 2
    print(f"# {info.scx_source}: {info.scx_dir}")
    for p in sorted(info.scx_dir.glob("*.bpf.c")):
        print(p)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .vm import MicroVM, probe_guest

    _cache_env(args)
    info = probe_guest(MicroVM())
    print(json.dumps(info, indent=2))
    return 0 if info.get("ok") else 1


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-I", dest="include", action="append", default=[], metavar="DIR",
                   help="add DIR to the include path (after the kernel's vmlinux.h)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set a read-only global (const volatile) before load, e.g. one the loader cannot infer")


def add_subcommands(subparsers: Any) -> None:
    """Register setup/verify/bench/probe on ``aios sched`` (the top-level CLI adds the agent's ``optimize``)."""
    p = subparsers.add_parser("setup", help="fetch and cache the guest kernel, tools and build headers")
    p.add_argument("--refresh", action="store_true", help="re-resolve the current kernel even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", default=None, help="cache root (default $AIOS_CACHE_DIR or ~/.cache/aios)")
    p.set_defaults(func=cmd_setup)

    p = subparsers.add_parser("verify", help="compile, check, kernel-verify and smoke-test schedulers in the VM")
    p.add_argument("files", nargs="+", metavar="FILE.bpf.c")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watchdog-ms", type=int, default=5000, help="sched_ext watchdog used during validation")
    p.add_argument("--stop-after", choices=["compile", "static"], default=None,
                   help="only run the host-side stages")
    _add_load_options(p)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("bench", help="measure a scheduler against EEVDF on a workload in the VM")
    p.add_argument("file", metavar="FILE.bpf.c")
    p.add_argument("--workload", required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    _add_load_options(p)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("examples", help="list the kernel's own example schedulers fetched by set-up")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_examples)

    p = subparsers.add_parser("probe", help="boot the micro-VM once and report the guest")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_probe)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m aios.sched_ext.cli``) for when the top-level CLI is not wired."""
    parser = argparse.ArgumentParser(prog="aios sched")
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
