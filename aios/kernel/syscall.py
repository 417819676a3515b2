"""Syscall objects: the only way an agent talks to the kernel.

A syscall is a pydantic request plus the bookkeeping an OS keeps for a call in flight:
who made it, where it is in its life (queued -> running <-> suspended -> done | failed),
when it was created, first scheduled and finished (waiting and turnaround time are derived
from these, never stored twice), and its result or a typed error.

Each module defines its own subclass next to the code that serves it (the LLM syscall is
here because every other module is optional). A subclass names its ``kind``; the kernel routes
on it. Callers wait on a syscall in a thread (``wait``) or in asyncio (``await syscall``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class SyscallStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"
    DONE = "done"
    FAILED = "failed"


class SyscallError(BaseModel):
    """A typed failure: ``type`` is a stable machine-readable name, ``message`` is for people."""

    type: str
    message: str


class SyscallFailed(RuntimeError):
    """Raised by ``Syscall.wait`` when the syscall ended in FAILED."""

    def __init__(self, syscall: Syscall):
        self.syscall = syscall
        self.error = syscall.error
        super().__init__(f"{syscall.kind} syscall {syscall.id} failed: {syscall.error.type}: {syscall.error.message}")


class SyscallRejected(ValueError):
    """Raised at submission for a request the kernel will not accept (it is never queued)."""


class Deferred:
    """What a handler returns when it will complete the syscall itself, later (e.g. a queued tool
    call that must not hold a worker thread while it waits)."""

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED = Deferred()


class Request(BaseModel):
    """Base of every syscall's request: unknown fields are refused (a misspelt option is an error the
    caller sees, not an option silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Syscall(BaseModel):
    """Base of every syscall. Subclasses add a typed ``request`` field and set ``kind``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=False)

    kind: ClassVar[str] = "base"

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    agent: str | None = Field(
        None, min_length=1, max_length=128, description="the calling agent: stamped by the kernel from the credential"
    )
    status: SyscallStatus = SyscallStatus.QUEUED
    created_at: float = Field(default_factory=time.time)
    scheduled_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: SyscallError | None = None

    _done: threading.Event = PrivateAttr(default_factory=threading.Event)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _callbacks: list = PrivateAttr(default_factory=list)
    _recorders: list = PrivateAttr(default_factory=list)
    _finishing: bool = PrivateAttr(default=False)
    _claimed: bool = PrivateAttr(default=False)

    def __hash__(self) -> int:
        """Hashable by identity of the call, so syscalls can go straight into ``asyncio.gather``."""
        return hash(self.id)

    # -- derived metrics -------------------------------------------------------------------
    @property
    def waiting_time(self) -> float | None:
        """Seconds from creation until the kernel first ran it."""
        return None if self.scheduled_at is None else self.scheduled_at - self.created_at

    @property
    def turnaround_time(self) -> float | None:
        """Seconds from creation until it finished (done or failed)."""
        return None if self.finished_at is None else self.finished_at - self.created_at

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    # -- transitions (called by the kernel only) --------------------------------------------
    def claim(self) -> bool:
        """True the first time only: a syscall object is submitted once (a replay is refused)."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def mark_running(self) -> None:
        if self.scheduled_at is None:
            self.scheduled_at = time.time()
        self.status = SyscallStatus.RUNNING

    def mark_suspended(self) -> None:
        self.status = SyscallStatus.SUSPENDED

    def complete(self, result: Any) -> None:
        self._finish(SyscallStatus.DONE, result=result)

    def fail(self, type: str, message: str) -> None:
        self._finish(SyscallStatus.FAILED, error=SyscallError(type=type, message=message))

    def cancel(self, reason: str = "cancelled") -> bool:
        """End the call now as FAILED with type ``Cancelled`` (nothing happens once it finished).

        The module serving it notices and frees what it holds: the LLM engine drops the sequence,
        its batch rows and its snapshot at its next step. True if the call ended cancelled.
        """
        self._finish(SyscallStatus.FAILED, error=SyscallError(type="Cancelled", message=reason))
        return self.error is not None and self.error.type == "Cancelled"

    def finish_as(self, finished: Syscall) -> None:
        """Finish this object as ``finished`` did: same id, agent, times and outcome.

        Why: the remote SDK builds a syscall locally, the kernel runs a copy in another process and
        sends it back finished; adopting the kernel's timestamps keeps waiting and turnaround times
        what the kernel measured, exactly as for an in-process call.
        """
        if finished.status not in (SyscallStatus.DONE, SyscallStatus.FAILED):
            raise ValueError(f"syscall {finished.id} has not finished ({finished.status.value})")
        self.id, self.agent, self.created_at = finished.id, finished.agent, finished.created_at
        self.scheduled_at = finished.scheduled_at
        self._finish(finished.status, finished.result, finished.error, at=finished.finished_at)

    def _finish(
        self,
        status: SyscallStatus,
        result: Any = None,
        error: SyscallError | None = None,
        at: float | None = None,
    ) -> None:
        with self._lock:
            if self._finishing:
                return
            self._finishing = True
            now = time.time() if at is None else at
            if self.scheduled_at is None:
                self.scheduled_at = now
            self.finished_at = now
            self.result, self.error, self.status = result, error, status
            recorders = self._recorders
        # Recorders (the kernel's audit of a failure) run before anyone can see the outcome: what a
        # caller is told has been recorded already. One that raises is logged; it cannot keep the
        # waiters asleep. Done-callbacks (waiters' wake-ups) run after.
        for rec in recorders:
            try:
                rec(self)
            except Exception:  # noqa: BLE001 - a recorder's bug must not lose the result
                logging.getLogger("aios.kernel").exception("syscall recorder failed")
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
            self._done.set()
        for cb in callbacks:
            cb(self)

    def add_recorder(self, rec) -> None:
        """Run ``rec(syscall)`` when it finishes, before any waiter wakes (the kernel's records)."""
        with self._lock:
            if not self._finishing:
                self._recorders.append(rec)
                return
        rec(self)

    def add_done_callback(self, cb) -> None:
        """Run ``cb(syscall)`` once it finishes (at once if it already has)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(cb)
                return
        cb(self)

    # -- waiting --------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Any:
        """Block until finished; return the result or raise ``SyscallFailed``/``TimeoutError``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.kind} syscall {self.id} not finished after {timeout}s")
        if self.status is SyscallStatus.FAILED:
            raise SyscallFailed(self)
        return self.result

    async def wait_async(self) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def _wake(_: Syscall) -> None:
            if loop.is_closed():  # the waiter's event loop ended before the call did: nobody to wake
                return
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

        self.add_done_callback(_wake)
        await fut
        return self.wait()  # no timeout: never a spurious TimeoutError if callback order changes

    def __await__(self):
        return self.wait_async().__await__()

    def metrics(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "agent": self.agent,
            "status": self.status.value,
            "waiting_time": self.waiting_time,
            "turnaround_time": self.turnaround_time,
        }


# ---------------------------------------------------------------------------------------------
# LLM syscall
# ---------------------------------------------------------------------------------------------


class ToolCall(BaseModel):
    """A function call the model asked for (OpenAI shape: a name and JSON arguments)."""

    id: str = Field(default_factory=lambda: "call_" + uuid.uuid4().hex[:8])
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(BaseModel):
    """One chat turn, OpenAI style. Rendered with the model's own chat template."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class LLMRequest(Request):
    """What an agent asks the LLM core for.

    ``priority``: lower values are served first (as with vLLM and Unix nice); default 0.
    ``expected_tokens``: the caller's estimate of the answer's length, used by shortest-job-first.
    ``choices``: constrain the answer to exactly one of these strings (constrained decoding).
    ``retrieve_k``: ask the kernel to put the agent's k most relevant stored items in the context.
    ``task_id``: the task this call belongs to; program-level scheduling (``las``) ranks a call by
    what all calls of the same agent and task consumed so far. The SDK fills in the agent's run.
    """

    messages: list[Message] = Field(min_length=1)
    max_new_tokens: int = Field(128, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    num_beams: int = Field(1, ge=1, le=16)
    length_penalty: float = 1.0
    stop: list[str] = Field(default_factory=list, max_length=16)
    priority: int = Field(0, ge=-100, le=100)
    expected_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    choices: list[str] | None = Field(None, min_length=1)
    retrieve_k: int = Field(0, ge=0, le=50)
    task_id: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _check(self) -> LLMRequest:
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.choices is not None and any(not c for c in self.choices):
            raise ValueError("choices must be non-empty strings")
        return self


class LLMResponse(BaseModel):
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length", "eos", "choice", "aborted"]
    tool_calls: list[ToolCall] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    preemptions: int = 0
    beam_score: float | None = None
    seed: int | None = Field(None, description="sampling seed used (drawn at random when the request gave none)")
    context_actions: list[str] = Field(default_factory=list, description="what context-window management did")
    tool_call_error: str | None = Field(None, description="why the tool calls in the text could not be parsed")


class LLMSyscall(Syscall):
    kind: ClassVar[str] = "llm"
    request: LLMRequest
    result: LLMResponse | None = None

    _token_listeners: list = PrivateAttr(default_factory=list)

    def on_token(self, listener) -> None:
        """Call ``listener(token_id)`` for each token the engine samples (streaming).

        Register before submitting. Listeners run on the engine's thread: they must only hand the
        id over (to a queue), never block. Beam search and remote cores emit no tokens; a
        streaming reader then gets the whole text when the syscall finishes.
        """
        self._token_listeners.append(listener)

    def emit_token(self, token_id: int) -> None:
        for listener in self._token_listeners:
            listener(token_id)

    def metrics(self) -> dict[str, Any]:
        m = super().metrics()
        if self.result is not None:
            m.update(
                prompt_tokens=self.result.prompt_tokens,
                completion_tokens=self.result.completion_tokens,
                preemptions=self.result.preemptions,
            )
        return m
