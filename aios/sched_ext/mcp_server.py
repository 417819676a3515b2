"""``aios mcp``: the sched_ext toolchain as an MCP server (stdio or streamable HTTP).

Why MCP: SchedCP's users drive the toolchain from a coding agent (Claude Code, Codex, …) whose
tools come from MCP servers. This module only maps the control plane (``control.py``) onto MCP
tools with the official SDK (``mcp`` 2.x, ``MCPServer``); what a call may do and what it refuses
is decided there, so both transports and every client get the same rules:

* nothing is loaded that did not pass every verifier stage in this server's run;
* a refusal or bad input is a tool error (``is_error``) with one line saying why; the server keeps
  serving; an unexpected failure is reported as a generic tool error and logged on stderr.

Tools run in worker threads (the SDK runs sync tools off the event loop), so ``sched_status``
answers while a measurement holds the micro-VM.

    aios mcp                                   # stdio (what a coding agent spawns)
    aios mcp --transport http --port 8765      # streamable HTTP on 127.0.0.1:8765/mcp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from aios.sched_ext.control import MAX_SOURCE_BYTES, ControlError, ControlPlane

INSTRUCTIONS = """\
The sched_ext toolchain of aios: write, verify and measure Linux CPU schedulers (BPF sched_ext) in a
micro-VM, against the kernel's default scheduler (EEVDF).
Typical flow: sched_workloads -> sched_profile(workload) -> sched_search(goal) -> sched_read(name)
-> write or edit BPF C -> sched_submit(source) (every verifier stage: compile, static checks, the
kernel verifier, a smoke run in the VM) -> sched_measure([digest, other names], workload) ->
sched_load(digest). Programs are named by the digest sched_submit returns or by a repository name;
sched_submit takes include_dirs (-I) under the server's --include-root directories; every
sched_measure result is stored in the policy repository (sched_read shows it).
Nothing is loaded that did not pass every verifier stage in this server's run. sched_status shows
what was verified, loaded and is running. Each micro-VM call takes tens of seconds to minutes."""


def build_server(plane: ControlPlane) -> Any:
    """An ``MCPServer`` whose tools call ``plane`` (a new server per plane: no global state)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from aios import __version__

    server = MCPServer("aios-sched", instructions=INSTRUCTIONS, version=__version__)

    def call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ControlError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool()
    def sched_workloads() -> dict[str, Any]:
        """The guest workloads the micro-VM can run (names for sched_profile and sched_measure)."""
        return {"workloads": call(plane.workloads)}

    @server.tool()
    def sched_profile(
        workload: Annotated[str, Field(max_length=100)],
        tier: Literal["summary", "trace"] = "summary",
    ) -> dict[str, Any]:
        """Profile a workload in the micro-VM. summary (cheap): task counts, runtimes, switches,
        wake-ups; trace (deeper): the same as a time series plus a wake-up latency probe."""
        return call(plane.profile, workload, tier)

    @server.tool()
    def sched_search(
        query: Annotated[str, Field(min_length=1, max_length=4000)],
        k: Annotated[int, Field(ge=1, le=20)] = 5,
    ) -> dict[str, Any]:
        """Search the policy repository for schedulers close to a goal, workload or profile text."""
        return {"hits": call(plane.search, query, k)}

    @server.tool()
    def sched_read(name: Annotated[str, Field(min_length=1, max_length=200)]) -> dict[str, Any]:
        """A repository scheduler: its BPF C source, documentation, tunables and every recorded
        result, and whether its source passed every verifier stage in this server's run."""
        return call(plane.read, name)

    @server.tool()
    def sched_submit(
        source: Annotated[str, Field(description=f"BPF C (sched_ext), at most {MAX_SOURCE_BYTES} bytes")],
        quick: Annotated[
            bool, Field(description="only the host-side stages (compile, static checks); not loadable")
        ] = False,
        include_dirs: Annotated[
            list[Annotated[str, Field(max_length=1000)]],
            Field(
                max_length=8,
                description="-I directories for the program's own headers (only under the server's "
                "--include-root directories)",
            ),
        ] = [],  # noqa: B006 - the SDK builds the schema from it; never mutated
    ) -> dict[str, Any]:
        """Submit a scheduler: it goes through every verifier stage (compile, static checks, the
        kernel verifier and a smoke run in the micro-VM). Returns its digest; a rejection is an
        error naming the stage and the reason."""
        return call(plane.submit, source, quick, include_dirs)

    @server.tool()
    def sched_measure(
        programs: Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=8)],
        workload: Annotated[str, Field(max_length=100)],
        reps: Annotated[int, Field(ge=1, le=10)] = 3,
    ) -> dict[str, Any]:
        """Measure verified schedulers (digests or repository names) against EEVDF on a workload,
        all in one micro-VM boot so they are compared with each other too. Every result is stored
        in the policy repository (a submitted program gets an entry of its own: `recorded`)."""
        return call(plane.measure, programs, workload, reps)

    @server.tool()
    def sched_load(
        program: Annotated[str, Field(max_length=200)],
        target: Literal["vm", "host"] = "vm",
        seconds: Annotated[float, Field(ge=1, le=300)] = 10.0,
    ) -> dict[str, Any]:
        """Load a verified scheduler. vm: a fresh micro-VM loads it, watches it for `seconds` and
        unloads it. host: only when the server runs in host mode; it stays until sched_unload."""
        return call(plane.load, program, target, seconds)

    @server.tool()
    def sched_unload() -> dict[str, Any]:
        """Unload the scheduler loaded on the host (a micro-VM load ends with its boot)."""
        return call(plane.unload)

    @server.tool()
    def sched_status() -> dict[str, Any]:
        """What this server verified (with each rejection's stage and reason), every load it made,
        what is loaded now, what is running, and whether the host can take a scheduler."""
        return call(plane.status)

    return server


def make_plane(
    repository: str | None = None,
    embedder: str = "minilm",
    workdir: str | None = None,
    host_mode: bool = False,
    include_roots: tuple[str, ...] = (),
) -> ControlPlane:
    """A control plane over the real toolchain (the micro-VM and the policy repository)."""
    from aios.kernel.embedding import make_embedder
    from aios.sched_ext.tools import SchedToolbox, ToolchainBackend

    backend = ToolchainBackend(
        repository_path=Path(repository) if repository else None, embedder=make_embedder(embedder)
    )
    box = SchedToolbox(backend=backend, workdir=Path(workdir) if workdir else None)
    return ControlPlane(box=box, host_mode=host_mode, include_roots=tuple(Path(r) for r in include_roots))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the server the ``aios mcp`` flags describe until the client (stdio) or a signal ends it.

    The HTTP transport has no authentication: on loopback the SDK adds DNS-rebinding protection;
    any other address is the operator's choice, but never together with host mode (anyone who
    can reach the port could then load schedulers on this host).
    """
    remote = args.transport == "http" and args.bind not in LOOPBACK
    if remote and args.host_mode:
        print(
            f"aios: error: --host-mode is refused with --bind {args.bind}: the HTTP transport has no "
            "authentication, so only a loopback server may load schedulers on this host",
            file=sys.stderr,
        )
        return 2
    if remote:
        print(f"aios mcp: warning: serving without authentication on {args.bind}:{args.port}", file=sys.stderr)
    plane = make_plane(args.repository, args.embedder, args.workdir, args.host_mode,
                       tuple(getattr(args, "include_root", None) or ()))
    server = build_server(plane)
    try:
        if args.transport == "stdio":
            server.run("stdio")
        else:
            server.run("streamable-http", host=args.bind, port=args.port, streamable_http_path=args.path)
    finally:
        plane.unload()  # never leave a host scheduler behind
    return 0
