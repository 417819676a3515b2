"""``aios serve``: run one kernel as a long-lived service on loopback TCP and a Unix socket.

One uvicorn server, one event loop, two listening sockets (bound here, so ``port=0`` works and
the Unix socket is created owner-only, mode 0600). The kernel's own threads (the engine thread,
the syscall pool) do the work; the event loop only moves requests and answers.

Shutdown (SIGTERM, or the first Ctrl-C) is a drain, in this order:
1. new requests get 503 ``ServiceShuttingDown`` (the sockets stay open so clients hear it);
2. in-flight syscalls get ``drain_timeout`` seconds to finish normally;
3. the kernel shuts down, which fails whatever is left with ``KernelShutdown`` — every client still
   waiting gets that typed error, nothing is dropped silently;
4. uvicorn closes the sockets once the last answer is written; the process exits 0.
A second Ctrl-C forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from aios.service.app import Service, ServiceLimits

log = logging.getLogger("aios.service")


class _Server(uvicorn.Server):
    """uvicorn, with SIGTERM meaning "drain the kernel first", and a hook once it listens."""

    def __init__(self, config: uvicorn.Config, service: Service, drain_timeout: float,
                 on_ready: Callable[[], None] | None):  # fmt: skip
        super().__init__(config)
        self.service = service
        self.drain_timeout = drain_timeout
        self.on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.on_ready is not None:
            self.on_ready()

    def handle_exit(self, sig: int, frame: Any) -> None:  # runs in the signal handler
        if self._drain_started:
            if sig == signal.SIGINT:
                self.force_exit = self.should_exit = True
            return
        self._drain_started = True
        if self._loop is None:  # not listening yet: nothing in flight
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        left = await self.service.drain(self.drain_timeout)
        if left:
            log.warning("drain: %d syscalls were still running at the deadline; failed with KernelShutdown", left)
        self.should_exit = True


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A Unix socket only this user can connect to (a stale file from a crashed server is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
    else:
        raise OSError(f"another server listens on {path} already")
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(
    kernel: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    unix_socket: Path | None = None,
    limits: ServiceLimits | None = None,
    drain_timeout: float = 30.0,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    log_level: str = "warning",
    limit_concurrency: int = 1024,
) -> None:
    """Serve ``kernel`` until SIGTERM/SIGINT, then drain it (see the module docstring).

    ``on_ready(where)`` runs once both sockets listen, with ``{"url", "unix_socket", "pid"}``.
    """
    service = Service(kernel, limits)
    tcp = bind_tcp(host, port)
    socks = [tcp]
    unix = None
    if unix_socket is not None:
        unix = bind_unix(Path(unix_socket))
        socks.append(unix)
    bound_host, bound_port = tcp.getsockname()[:2]
    where = {
        "url": f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}",
        "unix_socket": str(unix_socket) if unix_socket is not None else None,
        "pid": os.getpid(),
    }
    config = uvicorn.Config(
        service.app(),
        lifespan="off",
        log_level=log_level,
        access_log=False,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=max(drain_timeout, 1.0) + 30,
    )
    server = _Server(config, service, drain_timeout, (lambda: on_ready(where)) if on_ready else None)
    try:
        server.run(sockets=socks)
    finally:
        for s in socks:
            s.close()
        if unix_socket is not None:
            Path(unix_socket).unlink(missing_ok=True)
        if not service.draining:  # ended without a drain (startup failure): still free the kernel
            kernel.shutdown()
