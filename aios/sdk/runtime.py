"""How agent code reaches its kernel: an agent context, syscall-style calls, and concurrent runs.

Agent code never holds kernel internals; it holds an ``AgentContext`` (which kernel, and the
credential the kernel issued to this agent) and makes syscalls through it. The kernel's owner
enters an agent's context by name (``agent_context(kernel, "alice")`` uses ``kernel.owner``);
code already running as an agent cannot enter another agent's context. The module-level functions (``aios.chat`` ...) use the context of
the agent currently running in this thread or asyncio task (a ``ContextVar``, so each agent thread
sees its own and several kernels can serve agents in one process).
"""

from __future__ import annotations

import contextvars
import queue
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from aios.kernel.detokenize import Detokenizer
from aios.kernel.identity import Credential, act_as, acting, stop_acting
from aios.kernel.kernel import Kernel
from aios.kernel.syscall import LLMRequest, LLMResponse, LLMSyscall, Message, Syscall


@dataclass(frozen=True)
class AgentContext:
    """Which kernel, which agent; ``run`` names this run of the agent (its calls' default task)."""

    kernel: Kernel
    credential: Credential
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def agent(self) -> str:
        return self.credential.agent

    @property
    def group(self) -> str:
        """The agent's group now (the kernel's record, which an admin may change)."""
        return self.kernel.identities.group(self.credential.agent)

    def call(self, syscall: Syscall, timeout: float | None = None) -> Any:
        """Submit a syscall and wait for its result (raises ``SyscallFailed`` on a typed error)."""
        return self.kernel.submit(syscall, self.credential).wait(timeout)

    def stream(self, syscall: LLMSyscall, timeout: float | None = None) -> Iterator[str]:
        """Submit an LLM syscall now; iterate the text deltas as the engine samples tokens."""
        tokens: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        syscall.on_token(tokens.put)
        syscall.add_done_callback(lambda _: tokens.put(None))
        detok = Detokenizer(getattr(self.kernel.llm, "tokenizer", None), syscall.request.stop)
        self.kernel.submit(syscall, self.credential)
        return _deltas(tokens, detok, syscall, timeout)


def _deltas(tokens: queue.SimpleQueue, detok: Detokenizer, sc: LLMSyscall, timeout: float | None) -> Iterator[str]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            tok = tokens.get(timeout=left)
        except queue.Empty:
            raise TimeoutError(f"llm syscall {sc.id} not finished after {timeout}s") from None
        if tok is None:
            break
        if text := detok.push(tok):
            yield text
    if sc.result is not None and (rest := detok.finish(sc.result.text)):
        yield rest


_current: contextvars.ContextVar[AgentContext | None] = contextvars.ContextVar("aios_agent", default=None)


def current() -> AgentContext:
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("no aios agent is running here: use `with aios.agent_context(kernel, name):` or Agent.run")
    return ctx


@contextmanager
def use_context(ctx: Any) -> Iterator[Any]:
    """Make ``ctx`` the acting agent context inside the block: anything with ``agent``, ``group``,
    ``run``, ``call(syscall, timeout)`` and ``stream(syscall, timeout)`` (the remote SDK's)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


@contextmanager
def agent_context(
    kernel: Kernel, agent: str | Credential, group: str | None = None
) -> Iterator[AgentContext]:
    """Act as ``agent`` on ``kernel`` inside the block (scripts and tests use this directly).

    ``agent`` is a credential the kernel issued, or a name: then the kernel's owner vouches for it
    (``kernel.credential_for(name, group, by=kernel.owner)``; ``group`` None keeps the agent's
    registered group). Refused (``PermissionError``) inside another agent's context: agent code
    holds only its own.
    """
    outer = acting()
    if isinstance(agent, Credential):
        cred = agent
        if group is not None and group != kernel.identities.group(cred.agent):
            raise ValueError("a credential carries its group: pass group=None")
    else:
        if outer is not None and outer.agent != agent:
            raise PermissionError(f"code running as {outer.agent!r} may not enter {agent!r}'s context")
        cred = kernel.credential_for(agent, group, by=kernel.owner)
    if outer is not None and outer.agent != cred.agent:
        raise PermissionError(f"code running as {outer.agent!r} may not enter {cred.agent!r}'s context")
    if kernel.identities.verify(cred) is not None:
        raise kernel.identities.refuse(cred, f"agent_context: {kernel.identities.verify(cred)}")
    ctx = AgentContext(kernel, cred)
    token = _current.set(ctx)
    acting_token = act_as(cred)
    try:
        yield ctx
    finally:
        stop_acting(acting_token)
        _current.reset(token)


class ChatResult(BaseModel):
    """What a chat call gives back: the text, the full response and the syscall's timings."""

    text: str
    response: LLMResponse
    syscall_id: str
    waiting_time: float
    turnaround_time: float


def _as_messages(messages: str | list[Message] | list[dict]) -> list[Message]:
    if isinstance(messages, str):
        return [Message(role="user", content=messages)]
    return [m if isinstance(m, Message) else Message(**m) for m in messages]


def chat(messages: str | list[Message] | list[dict], *, timeout: float | None = None, **request: Any) -> ChatResult:
    """Ask the LLM core. ``request`` takes any ``LLMRequest`` field (max_new_tokens, temperature...).

    Invalid fields raise pydantic's ``ValidationError`` here, before anything reaches the kernel.
    ``task_id`` defaults to this run of the agent: program-level scheduling counts the service of
    all the run's calls together; pass your own to group calls differently.
    """
    ctx = current()
    if request.get("task_id") is None:
        request["task_id"] = ctx.run
    sc = LLMSyscall(request=LLMRequest(messages=_as_messages(messages), **request))
    ctx.call(sc, timeout)
    return _chat_result(sc)


def _chat_result(sc: LLMSyscall) -> ChatResult:
    resp: LLMResponse = sc.wait(0)
    return ChatResult(
        text=resp.text,
        response=resp,
        syscall_id=sc.id,
        waiting_time=sc.waiting_time or 0.0,
        turnaround_time=sc.turnaround_time or 0.0,
    )


class ChatStream:
    """A chat answer as it is generated: iterate for text deltas; ``result`` is the ``ChatResult``.

    The deltas concatenated are the answer's text (see ``aios.kernel.detokenize``). Reading
    ``result`` first consumes whatever was not iterated yet.
    """

    def __init__(self, syscall: LLMSyscall, deltas: Iterator[str]):
        self.syscall = syscall
        self._deltas = deltas

    def __iter__(self) -> Iterator[str]:
        yield from self._deltas

    @property
    def result(self) -> ChatResult:
        for _ in self._deltas:
            pass
        return _chat_result(self.syscall)


def chat_stream(
    messages: str | list[Message] | list[dict], *, timeout: float | None = None, **request: Any
) -> ChatStream:
    """Like ``chat``, but the text arrives token by token: ``for delta in aios.chat_stream(...)``."""
    ctx = current()
    if request.get("task_id") is None:
        request["task_id"] = ctx.run
    sc = LLMSyscall(request=LLMRequest(messages=_as_messages(messages), **request))
    return ChatStream(sc, ctx.stream(sc, timeout))


class AgentRun(BaseModel):
    """The outcome of one agent's run: its output or its error, and its timings."""

    agent: str
    task: Any = None
    output: Any = None
    error: str | None = None
    started_at: float
    finished_at: float
    syscalls: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def turnaround_time(self) -> float:
        return self.finished_at - self.started_at

    @property
    def waiting_time(self) -> float:
        """Time this agent's syscalls spent queued before the kernel first ran them."""
        return sum(s.get("waiting_time") or 0.0 for s in self.syscalls)


@dataclass
class AgentSpec:
    """One agent to run: a name, a callable taking the task, and the task."""

    name: str
    fn: Callable[[Any], Any]
    task: Any = None
    group: str | None = None  # None: as registered with the kernel (``user`` for a new agent)
    exits: list[Callable[[], None]] = field(default_factory=list)

    def call(self) -> tuple[Any, str | None]:
        """(output, error): the agent's function on its task, an exception turned into the error text
        (never raised), then the exit hooks, whatever happened. Run inside the agent's context."""
        try:
            return self.fn(self.task), None
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        finally:
            for hook in self.exits:
                hook()


def run_agent(kernel: Kernel, spec: AgentSpec) -> AgentRun:
    """Run one agent in the calling thread; an exception becomes the run's error, never the kernel's."""
    started = time.time()
    with agent_context(kernel, spec.name, spec.group):
        try:
            output, error = spec.call()
        finally:
            # like a process's exit: whatever it left in flight is cancelled and its rows freed
            kernel.cancel_agent(spec.name, since=started, reason=f"agent {spec.name} exited")
    finished = time.time()
    return AgentRun(
        agent=spec.name,
        task=spec.task,
        output=output,
        error=error,
        started_at=started,
        finished_at=finished,
        syscalls=[s.metrics() for s in kernel.history(agent=spec.name) if s.created_at >= started],
    )


def run_agents(kernel: Kernel, specs: list[AgentSpec], max_concurrency: int | None = None) -> list[AgentRun]:
    """Run agents concurrently against one kernel (one thread each); results in the input order."""
    if not specs:
        return []
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("agent names must be unique within one run")
    workers = max_concurrency or len(specs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aios-agent") as pool:
        futures = [pool.submit(contextvars.copy_context().run, run_agent, kernel, s) for s in specs]
        return [f.result() for f in futures]
