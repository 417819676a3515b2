"""``aios sched ...`` and ``aios mcp``: the sched_ext toolchain (``aios.sched_ext``) and its agent.

Both import their subsystem only when used: it is a separate one, with its own dependencies.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from aios.cli.base import Parser, UsageError


def add_sched(sub: Any, argv: Sequence[str]) -> None:
    """``aios sched``; its subcommands are added only when ``argv`` runs it."""
    sched = sub.add_parser("sched", help="sched_ext: the LLM scheduler agent for the Linux CPU scheduler")
    sched.set_defaults(func=None, sched_parser=sched)
    if argv and argv[0] == "sched":  # import only when used: it is a separate subsystem
        try:
            from aios.sched_ext.cli import add_subcommands
        except ImportError as exc:
            sched.set_defaults(sched_error=f"the sched_ext module is not available in this build ({exc})")
            sched.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        else:
            sched_sub = sched.add_subparsers(dest="sched_command", metavar="SUBCOMMAND", parser_class=Parser)
            add_subcommands(sched_sub)
            add_sched_optimize(sched_sub)


def add_sched_optimize(sched_sub: Any) -> None:
    """``aios sched optimize``: the sched-agent. Wired here, not by the toolchain's own CLI, because
    the toolchain (``aios.sched_ext``) never imports the agent that sits above it."""
    from aios.agents.sched_agent.cli import add_optimize_subcommand

    add_optimize_subcommand(sched_sub)


def add_mcp(sub: Any) -> None:
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
    p.add_argument("--include-root", action="append", default=[], metavar="DIR",
                   help="a directory under which sched_submit may take -I include directories (repeatable)")
    p.add_argument(
        "--host-mode",
        action="store_true",
        help="allow loading verified schedulers on this host (needs root and a sched_ext kernel)",
    )
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        import mcp  # noqa: F401  (the official SDK: an optional dependency)
    except ImportError:
        raise UsageError("`aios mcp` needs the mcp package: pip install 'aios[serve]'") from None
    from aios.sched_ext.mcp_server import serve_from_args

    return serve_from_args(args)
