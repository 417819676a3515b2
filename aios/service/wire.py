"""What travels over the wire between the remote SDK and ``aios serve``: pydantic, both ways.

A call is ``{"kind": ..., "request": ...}``: the same request model the in-process SDK builds,
discriminated by the syscall kind, and nothing else. In particular a body never says who is
asking: the bearer token does (the server stamps the agent from the credential it maps to), and a
body with an ``agent`` or ``group`` field is refused (``extra="forbid"``).

The answer is the finished syscall (``SyscallOut``): its id, the agent the kernel stamped, status,
the kernel's own timestamps (so waiting and turnaround are the kernel's measurements, not the
network's) and its result or typed error. The client rebuilds its local syscall object from it
(``Syscall.finish_as``).

Errors that never became a syscall (bad token, bad JSON, a body too large or too slow, a draining
server) are ``ErrorBody``: OpenAI's error shape, so the official ``openai`` client and ours read
the same thing.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from pydantic_core import to_jsonable_python

from aios.kernel.access import AccessSyscall
from aios.kernel.identity import IdentitySyscall
from aios.kernel.memory import MemorySyscall
from aios.kernel.storage import StorageSyscall
from aios.kernel.syscall import LLMSyscall, Syscall, SyscallError, SyscallStatus
from aios.kernel.tools import ToolSyscall

# The syscall kinds a remote agent may make: exactly those of the in-process SDK.
SYSCALL_CLASSES: tuple[type[Syscall], ...] = (
    LLMSyscall,
    MemorySyscall,
    StorageSyscall,
    ToolSyscall,
    AccessSyscall,
    IdentitySyscall,
)


class _Call(BaseModel):
    """Base of the per-kind call models (``LLMCall``, ``MemoryCall`` ...)."""

    model_config = ConfigDict(extra="forbid")
    syscall_class: ClassVar[type[Syscall]]

    def build(self) -> Syscall:
        """A fresh syscall object; the kernel stamps the agent from the caller's credential."""
        return self.syscall_class(request=self.request)


def _call_model(cls: type[Syscall]) -> type[_Call]:
    field = cls.model_fields["request"]
    model = create_model(
        f"{cls.__name__}Body",
        __base__=_Call,
        kind=(Literal[cls.kind], ...),  # type: ignore[valid-type]
        request=(field.annotation, Field(discriminator=field.discriminator) if field.discriminator else ...),
    )
    model.syscall_class = cls
    return model


CALL_MODELS = tuple(_call_model(c) for c in SYSCALL_CLASSES)
SyscallCall = Annotated[functools.reduce(operator.or_, CALL_MODELS), Field(discriminator="kind")]
CALL_ADAPTER: TypeAdapter = TypeAdapter(SyscallCall)
LLMSyscallBody = CALL_MODELS[0]


def call_of(syscall: Syscall) -> dict[str, Any]:
    """The wire form of a syscall the SDK built (client side)."""
    return {"kind": syscall.kind, "request": syscall.request.model_dump(mode="json")}  # defaults too: ``op``


class SyscallOut(BaseModel):
    """A finished syscall as the server sends it back."""

    id: str
    kind: str
    agent: str | None
    status: SyscallStatus
    created_at: float
    scheduled_at: float | None
    finished_at: float | None
    result: Any = None
    error: SyscallError | None = None

    @classmethod
    def of(cls, sc: Syscall) -> SyscallOut:
        result = sc.result
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return cls(
            id=sc.id,
            kind=sc.kind,
            agent=sc.agent,
            status=sc.status,
            created_at=sc.created_at,
            scheduled_at=sc.scheduled_at,
            finished_at=sc.finished_at,
            result=to_jsonable_python(result, fallback=repr),
            error=sc.error,
        )

    def apply_to(self, local: Syscall) -> None:
        """Finish the client's local syscall object as the kernel finished its copy."""
        finished = type(local).model_validate(
            {**self.model_dump(exclude={"kind"}), "request": local.request}
        )
        local.finish_as(finished)


class ErrorDetail(BaseModel):
    type: str
    message: str
    code: int | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "code", "param"}}``."""

    error: ErrorDetail


class StreamEvent(BaseModel):
    """One server-sent event of ``POST /v1/aios/syscalls/stream``: a text delta, then the syscall."""

    type: Literal["delta", "syscall", "error"]
    text: str = ""
    syscall: SyscallOut | None = None
    error: ErrorDetail | None = None


class WhoAmI(BaseModel):
    agent: str
    group: str
