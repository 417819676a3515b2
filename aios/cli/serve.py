"""``aios serve`` and ``aios agent add|list|revoke``: the service's part of the command line.

    aios serve --data-dir ./state                       # embedded SmolLM2, 127.0.0.1:8000 + ./state/aios.sock
    aios agent add alice --group user --data-dir ./state  # prints alice's token (once)
    aios agent list --data-dir ./state
    aios agent revoke alice --data-dir ./state

``aios agent`` works on the kernel's state directory directly (the identity rows in its SQLite),
so it works whether or not a server runs on it; a running server sees a new or revoked token at
the next request (authentication reads the database, not a copy).

Nothing here imports the server's dependencies (uvicorn, starlette) until ``serve`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aios.cli.base import SCHEDULERS, UsageError, check_model, format_table, load_llm

DEFAULT_PORT = 8000


def add_subcommands(sub: Any) -> None:
    """Add ``serve`` and ``agent`` to the ``aios`` parser's subparsers."""
    p = sub.add_parser("serve", help="serve one kernel to agents in other processes (HTTP, Unix socket, OpenAI API)")
    p.add_argument("--model", default="smollm2", help="smollm2 (embedded), a path, a hub name, or openai:URL#MODEL")
    p.add_argument("--data-dir", default=None, help="the kernel's state: identities, audit log, storage "
                   "(default <cache>/serve)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; tokens travel in clear over TCP")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    p.add_argument("--socket", default=None, help="Unix socket path (default <data-dir>/aios.sock; 'none' for no socket)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="rr", help="agent scheduling policy")
    p.add_argument("--quantum", type=int, default=8, help="round-robin time slice in tokens")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together in one step")
    p.add_argument("--embedder", default="minilm", help="minilm (offline) or hash[:dim] (tests)")
    p.add_argument("--workers", type=int, default=8, help="threads serving non-LLM syscalls")
    p.add_argument("--cache-dir", default=None, help="model cache (default ~/.cache/aios)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 past it)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a body may take to arrive (408)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight syscalls get before they fail with KernelShutdown")  # fmt: skip
    p.add_argument("--ready-file", default=None, help="write {url, unix_socket, pid} as JSON here once listening")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_serve)

    agent = sub.add_parser("agent", help="manage the agents (and their tokens) of a kernel's state directory")
    asub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", parser_class=type(agent))
    a = asub.add_parser("add", help="register an agent and print its token (shown once)")
    a.add_argument("name")
    a.add_argument("--group", choices=("admin", "user", "guest"), default="user")
    a.add_argument("--rotate", action="store_true", help="issue a new token for an existing agent")
    a = asub.add_parser("list", help="the registered agents (never their tokens)")
    a.add_argument("--json", action="store_true")
    a = asub.add_parser("revoke", help="the agent's token stops working at once")
    a.add_argument("name")
    for a in asub.choices.values():
        a.add_argument("--data-dir", default=None, help="the kernel's state directory (default <cache>/serve)")
        a.add_argument("--cache-dir", default=None)
    agent.set_defaults(func=cmd_agent, agent_parser=agent)


def data_dir_of(args: argparse.Namespace) -> Path:
    from aios.cache import cache_root

    return Path(args.data_dir).expanduser() if args.data_dir else cache_root(args.cache_dir) / "serve"


# -- aios serve ------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from aios.kernel.config import KernelConfig
    from aios.kernel.kernel import Kernel

    try:
        from aios.service.app import ServiceLimits
        from aios.service.server import serve
    except ImportError as exc:
        raise UsageError(f"`aios serve` needs the serve extra (pip install 'aios[serve]'): {exc}") from exc
    data_dir = data_dir_of(args)
    sock = None if args.socket == "none" else Path(args.socket) if args.socket else data_dir / "aios.sock"
    if sock is not None and len(str(sock.absolute())) > 100:
        raise UsageError(f"Unix socket path too long for the OS (over 100 bytes): {sock}; pass --socket")
    check_model(args.model)
    try:
        cfg = KernelConfig(model=args.model, scheduler=args.scheduler, quantum=args.quantum,
                           max_batch_size=args.max_batch_size, cache_dir=args.cache_dir, data_dir=data_dir,
                           embedder=args.embedder, workers=args.workers)  # fmt: skip
        limits = ServiceLimits(max_body_bytes=args.max_body, body_timeout_s=args.body_timeout)
    except Exception as exc:  # pydantic ValidationError: the first problem, in one line
        errors = getattr(exc, "errors", None)
        raise UsageError(f"bad option: {errors()[0]['msg'] if callable(errors) else exc}") from exc
    kernel = Kernel(cfg)
    load_llm(kernel, args.quiet)

    def ready(where: dict[str, Any]) -> None:
        unix = f" and unix:{where['unix_socket']}" if where["unix_socket"] else ""
        print(
            f"aios serve: model {kernel.config.model} ({kernel.config.scheduler}); kernel state in {data_dir}\n"
            f"  listening on {where['url']}{unix} (pid {where['pid']}; SIGTERM drains)\n"
            f"  mint a token:  aios agent add NAME --group user --data-dir {data_dir}\n"
            f"  remote SDK:    aios.connect({where['url']!r}, token)\n"
            f"  OpenAI API:    OpenAI(base_url={where['url'] + '/v1'!r}, api_key=token)",
            flush=True,
        )
        if args.ready_file:
            tmp = Path(args.ready_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(where))
            os.replace(tmp, args.ready_file)

    try:
        serve(kernel, host=args.host, port=args.port, unix_socket=sock, limits=limits,
              drain_timeout=args.drain_timeout, on_ready=ready)  # fmt: skip
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc}") from exc
    print("aios serve: drained and stopped", file=sys.stderr, flush=True)
    return 0


# -- aios agent ------------------------------------------------------------------------------------------
def cmd_agent(args: argparse.Namespace) -> int:
    from aios.kernel.access import AccessManager

    if args.agent_command is None:
        args.agent_parser.print_help()
        return 2
    data_dir = data_dir_of(args)
    data_dir.mkdir(parents=True, exist_ok=True)
    access = AccessManager(data_dir)  # the registry lives in its database, next to the audit log
    registry = access.identities
    try:
        if args.agent_command == "add":
            token = registry.add(args.name, args.group, rotate=args.rotate)
            print(token)
            print(f"agent {args.name!r} ({args.group}) added in {data_dir}; the token above is shown once",
                  file=sys.stderr)  # fmt: skip
        elif args.agent_command == "revoke":
            registry.revoke(args.name)
            print(f"agent {args.name!r} revoked", file=sys.stderr)
        else:
            agents = registry.list()
            if args.json:
                print(json.dumps([a.model_dump() for a in agents], indent=1))
            else:
                rows = [[a.name, a.group, time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at)),
                         "revoked" if a.revoked else "active"] for a in agents]  # fmt: skip
                print(format_table(["agent", "group", "created", "status"], rows))
    except (ValueError, KeyError) as exc:
        raise UsageError(str(exc).strip("'\"")) from exc
    finally:
        access.close()
    return 0
