"""The remote SDK: ``aios.connect(url_or_socket, token)`` -> a ``Connection``.

A connection knows its ``agent`` and ``group`` (the server tells them from the token:
``/v1/aios/whoami``) and has ``call(syscall, timeout)`` and ``stream(syscall, timeout)``; a
``RemoteContext`` over it is an agent context like the in-process ``AgentContext``, so the SDK's
own functions run through it unchanged:

    conn = aios.connect("http://127.0.0.1:8000", token)      # or "unix:///path/aios.sock"
    conn.chat("Hello").text                                    # the same calls as in process
    run = conn.run(MyAgent(), task)                            # an aios.Agent, unchanged
    with conn.acting():                                        # or any code that calls aios.*
        aios.memory_add("note")

Each call sends the syscall the SDK built (its kind and request, nothing else) and gets back the
syscall the kernel finished; the local object takes over its id, agent, timestamps and outcome
(``Syscall.finish_as``), so ``waiting_time``/``turnaround_time`` are the kernel's measurements and
a kernel refusal raises the same ``SyscallFailed`` with the same ``error.type`` as in process.

Refusals before a syscall exists (bad token, draining server, oversized body) raise
``ServiceRefused`` (a ``SyscallRejected``, as the in-process kernel raises at submission), with the
HTTP status and the error type; a bad token raises ``AuthenticationFailed``.

Only ``httpx`` is needed here: agent processes never import the server's dependencies.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from aios.kernel.identity import AuthenticationFailed
from aios.kernel.syscall import Syscall, SyscallRejected
from aios.sdk import calls
from aios.sdk.runtime import AgentRun, AgentSpec, chat, chat_stream, use_context
from aios.service.wire import ErrorBody, StreamEvent, SyscallOut, WhoAmI, call_of


class ServiceRefused(SyscallRejected):
    """The service refused a request before it became a syscall (``status``, ``error_type``)."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(f"{status} {error_type}: {message}")
        self.status, self.error_type, self.message = status, error_type, message


def _refusal(response: httpx.Response) -> Exception:
    try:
        err = ErrorBody.model_validate_json(response.read()).error
        kind, message = err.type, err.message
    except Exception:
        kind, message = "HTTPError", response.text[:500]
    if response.status_code == 401:
        return AuthenticationFailed(message)
    return ServiceRefused(response.status_code, kind, message)


def _transport_for(target: str) -> tuple[str, httpx.HTTPTransport | None]:
    """``http(s)://host:port`` -> TCP; ``unix:///path`` or a filesystem path -> that Unix socket."""
    if target.startswith(("http://", "https://")):
        return target.rstrip("/"), None
    path = target.removeprefix("unix://")
    if not path.startswith("/") and not path.startswith("."):
        raise ValueError(f"connect() wants http://host:port or unix:///path/to.sock, got {target!r}")
    return "http://aios", httpx.HTTPTransport(uds=path)


@dataclass(frozen=True)
class RemoteContext:
    """The agent context of remote code: what ``aios.sdk`` functions call through ``current()``."""

    conn: Connection
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # the calls' default task_id

    @property
    def agent(self) -> str:
        return self.conn.agent

    @property
    def group(self) -> str:
        return self.conn.group

    def call(self, syscall: Syscall, timeout: float | None = None) -> Any:
        return self.conn.call(syscall, timeout)

    def stream(self, syscall: Syscall, timeout: float | None = None) -> Iterator[str]:
        return self.conn.stream(syscall, timeout)


class Connection:
    """One agent's connection to an ``aios serve`` kernel (thread-safe: agents may share it)."""

    def __init__(self, target: str, token: str, *, connect_timeout: float = 10.0, history: int = 10_000):
        base, transport = _transport_for(target)
        self.target = target
        self._http = httpx.Client(
            base_url=base,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self._history: deque[Syscall] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._session = RemoteContext(self)  # calls made through the connection's own methods
        r = self._http.get("/v1/aios/whoami")
        if r.status_code != 200:
            self._http.close()
            raise _refusal(r)
        who = WhoAmI.model_validate_json(r.content)
        self.agent, self._group = who.agent, who.group

    @property
    def group(self) -> str:
        return self._group

    # -- the agent-context protocol (what aios.sdk's functions call) --------------------------------
    def call(self, syscall: Syscall, timeout: float | None = None) -> Any:
        """Run ``syscall`` on the remote kernel and wait; like ``AgentContext.call``."""
        try:
            r = self._http.post("/v1/aios/syscalls", json=call_of(syscall), timeout=self._timeout(timeout))
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"{syscall.kind} syscall not finished after {timeout}s") from exc
        if r.status_code != 200:
            raise _refusal(r)
        self._settle(syscall, SyscallOut.model_validate_json(r.content))
        return syscall.wait(0)

    def stream(self, syscall: Syscall, timeout: float | None = None) -> Iterator[str]:
        """Submit an LLM syscall now; iterate its text deltas; it is finished when they end."""
        request = self._http.build_request(
            "POST", "/v1/aios/syscalls/stream", json=call_of(syscall), timeout=self._timeout(timeout)
        )
        response = self._http.send(request, stream=True)
        if response.status_code != 200:
            try:
                raise _refusal(response)
            finally:
                response.close()
        return self._events(response, syscall)

    def _events(self, response: httpx.Response, syscall: Syscall) -> Iterator[str]:
        try:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = StreamEvent.model_validate_json(line[6:])
                if event.type == "delta":
                    yield event.text
                elif event.type == "syscall" and event.syscall is not None:
                    self._settle(syscall, event.syscall)
        finally:
            response.close()
        if not syscall.finished:
            raise ConnectionError(f"the stream of syscall {syscall.id} ended before it finished")

    def _settle(self, syscall: Syscall, out: SyscallOut) -> None:
        out.apply_to(syscall)
        with self._lock:
            self._history.append(syscall)

    @staticmethod
    def _timeout(timeout: float | None) -> httpx.Timeout:
        return httpx.Timeout(connect=10.0, read=timeout, write=60.0, pool=timeout)

    # -- acting as the agent --------------------------------------------------------------------------
    @contextmanager
    def acting(self, run: RemoteContext | None = None) -> Iterator[RemoteContext]:
        """Inside the block, ``aios.chat``/``aios.memory_add``... go to the remote kernel."""
        with use_context(run or self._session) as ctx:
            yield ctx

    def run(self, agent: Any, task: Any = None) -> AgentRun:
        """Run an ``aios.Agent`` (or an ``AgentSpec``) against the remote kernel, in this thread.

        The agent acts as the token's agent, whatever its ``name``: the kernel decides who it is.
        """
        spec: AgentSpec = agent if isinstance(agent, AgentSpec) else agent.spec(task)
        started = time.time()
        with self.acting(RemoteContext(self)):  # a run of its own: its calls share one task_id
            output, error = spec.call()
        finished = time.time()
        made = [s for s in self.history() if s.created_at >= started]  # loopback: one clock
        return AgentRun(agent=self.agent, task=spec.task, output=output, error=error, started_at=started,
                        finished_at=finished, syscalls=[s.metrics() for s in made])  # fmt: skip

    def history(self) -> list[Syscall]:
        """The syscalls this connection made (finished), oldest first."""
        with self._lock:
            return list(self._history)

    def health(self) -> dict[str, Any]:
        return self._http.get("/health").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote(fn):
    """An SDK function as a method: it runs with this connection as the acting agent."""

    def method(self: Connection, *args: Any, **kwargs: Any) -> Any:
        with self.acting():
            return fn(*args, **kwargs)

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = fn.__doc__
    return method


# the same calls as the in-process SDK (aios.chat, aios.chat_stream and every aios.sdk.calls function)
for _fn in (chat, chat_stream, *(getattr(calls, n) for n in calls.__all__)):
    setattr(Connection, _fn.__name__, _remote(_fn))


def connect(target: str, token: str, **kwargs: Any) -> Connection:
    """Connect to ``aios serve`` as the agent ``token`` belongs to (see ``Connection``)."""
    return Connection(target, token, **kwargs)
