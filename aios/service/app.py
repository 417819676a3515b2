"""The service: one kernel behind an HTTP API (the remote SDK's routes and OpenAI's).

Every request takes the same path, in this order, so that the cheap checks protect the costly ones:

1. ``draining``? 503 ``ServiceShuttingDown`` (SIGTERM came; in-flight calls still finish);
2. the bearer token -> ``kernel.identities.authenticate`` -> a credential (401 otherwise; the
   registry audits the failure). Nothing of the body is read before this;
3. the body, read with a size limit (413) and a deadline (408: a client that trickles its body
   holds only its own connection), parsed by pydantic (400 bad JSON, 422 wrong fields or types);
   a body that names an agent or a group is refused (403): the token says who is asking;
4. one syscall built from the body, submitted with the credential (the kernel stamps the agent),
   awaited without blocking the event loop, and answered.

Every refusal is answered in OpenAI's error shape and written to the kernel's audit log. A
syscall the kernel accepted is never dropped: if the client goes away it still runs to the end and
stays in the kernel's history (the audit log notes the disconnect).

Routes: ``GET /health``; ``GET /v1/aios/whoami``; ``POST /v1/aios/syscalls`` (a call, answered
with the finished syscall); ``POST /v1/aios/syscalls/stream`` (an LLM call, answered with
server-sent text deltas, then the finished syscall); and the OpenAI routes of ``openai_api``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aios.kernel.detokenize import Detokenizer
from aios.kernel.identity import AuthenticationFailed, Credential
from aios.kernel.syscall import LLMSyscall, Syscall, SyscallRejected
from aios.service.errors import ServiceError, invalid
from aios.service.wire import (
    CALL_ADAPTER,
    ErrorBody,
    ErrorDetail,
    LLMSyscallBody,
    StreamEvent,
    SyscallOut,
    WhoAmI,
)

log = logging.getLogger("aios.service")


class ServiceLimits(BaseModel):
    """What one request may cost before it is refused."""

    max_body_bytes: int = Field(1 << 20, ge=1024, description="413 past this")
    body_timeout_s: float = Field(30.0, gt=0, description="408 when the body takes longer to arrive")


def model_id(model: str) -> str:
    """The name ``/v1/models`` shows: the model string, or a local path's last component."""
    return Path(model).name if ("/" in model and Path(model).expanduser().exists()) else model


class Service:
    """One kernel, served. Build the ASGI app with ``app()``; ``drain()`` on shutdown."""

    def __init__(self, kernel: Any, limits: ServiceLimits | None = None):
        self.kernel = kernel
        self.limits = limits or ServiceLimits()
        self.model_id = model_id(str(kernel.config.model))
        self.started_at = time.time()
        self.inflight: set[Syscall] = set()
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the ASGI app --------------------------------------------------------------------------------
    def app(self) -> Starlette:
        from aios.service import openai_api

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/aios/whoami", self.whoami, methods=["GET"]),
            Route("/v1/aios/syscalls", self.syscall, methods=["POST"]),
            Route("/v1/aios/syscalls/stream", self.syscall_stream, methods=["POST"]),
            *openai_api.routes(self),
        ]
        app = Starlette(routes=routes, exception_handlers={ServiceError: self._refusal, Exception: self._crash})
        app.state.service = self
        return app

    async def _refusal(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        agent = getattr(request.state, "agent", None) or "?"
        if exc.type != "AuthenticationFailed":  # the registry audited that one already
            self.audit(agent, request, "denied", f"{exc.status} {exc.type}: {exc.message}")
        return self.error_response(exc)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        """A bug in a handler: the caller gets a typed 500, the audit log a record, the server carries on."""
        log.exception("handler crashed on %s %s", request.method, request.url.path, exc_info=exc)
        return await self._refusal(request, ServiceError(500, type(exc).__name__, str(exc) or "internal error"))

    @staticmethod
    def error_response(exc: ServiceError) -> JSONResponse:
        body = ErrorBody(error=ErrorDetail(type=exc.type, message=exc.message, code=exc.status, param=exc.param))
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)

    def audit(self, agent: str, request: Request, outcome: str, detail: str) -> None:
        access = self.kernel.modules.get("access")
        if access is not None:
            access.record(agent, "service", request.url.path, request.method, outcome, detail)

    # -- the steps every request takes ------------------------------------------------------------------
    def authenticate(self, request: Request) -> Credential:
        if self.draining:
            raise ServiceError(503, "ServiceShuttingDown", "the kernel is shutting down; retry elsewhere")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            token = ""
        try:
            cred = self.kernel.identities.authenticate(token.strip())
        except AuthenticationFailed as exc:
            raise ServiceError(401, "AuthenticationFailed", f"{exc} (send `Authorization: Bearer <token>`; "
                               "mint one with `aios agent add NAME --data-dir DIR`)") from None  # fmt: skip
        request.state.agent = cred.agent
        return cred

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ServiceError(400, "InvalidRequest", f"bad Content-Length {declared!r}")
            if int(declared) > limit:
                raise ServiceError(413, "BodyTooLarge", f"body of {declared} bytes; the limit is {limit}")
        chunks: list[bytes] = []
        size = 0

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ServiceError(413, "BodyTooLarge", f"body over {limit} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.limits.body_timeout_s)
        except TimeoutError:
            raise ServiceError(
                408, "RequestTimeout", f"the body did not arrive within {self.limits.body_timeout_s:g}s"
            ) from None
        return b"".join(chunks)

    async def parse(self, request: Request, adapter: TypeAdapter | type[BaseModel]) -> Any:
        raw = await self.read_body(request)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServiceError(400, "InvalidJSON", f"the body is not JSON: {exc}") from None
        if isinstance(data, dict) and ({"agent", "group"} & data.keys()):
            raise ServiceError(
                403, "PermissionDenied", "a body may not name an agent or a group: the token says who you are"
            )
        try:
            if isinstance(adapter, TypeAdapter):
                return adapter.validate_python(data)
            return adapter.model_validate(data)
        except ValidationError as exc:
            raise invalid(exc) from None

    def submit(self, sc: Syscall, cred: Credential) -> Syscall:
        if self.draining:
            raise ServiceError(503, "ServiceShuttingDown", "the kernel is shutting down; retry elsewhere")
        try:
            self.kernel.submit(sc, cred)
        except SyscallRejected as exc:
            kind = getattr(exc, "error_type", "SyscallRejected")
            status = 401 if kind == "AuthenticationFailed" else 503 if "shut down" in str(exc) else 409
            raise ServiceError(status, kind, str(exc)) from None
        self.inflight.add(sc)
        self._idle.clear()
        loop = asyncio.get_running_loop()
        sc.add_done_callback(lambda s: notify(loop, self._done, s))
        return sc

    def _done(self, sc: Syscall) -> None:
        self.inflight.discard(sc)
        if not self.inflight:
            self._idle.set()

    @staticmethod
    async def finished(sc: Syscall) -> Syscall:
        """Wait for ``sc`` without blocking the event loop (never raises for a failed syscall)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        sc.add_done_callback(lambda _: notify(loop, lambda: fut.done() or fut.set_result(None)))
        await fut
        return sc

    def tokenizer(self) -> Any | None:
        """The LLM core's tokenizer (None for a remote core without one: no token streaming)."""
        return getattr(self.kernel.llm, "tokenizer", None)

    async def text_deltas(self, sc: LLMSyscall) -> AsyncIterator[str]:
        """Text deltas of ``sc`` as the engine samples its tokens (``sc`` not yet submitted).

        The listener only moves token ids onto the event loop; decoding happens here, so a slow
        client slows its own stream, never the engine's thread."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        sc.on_token(lambda tok: notify(loop, queue.put_nowait, tok))
        sc.add_done_callback(lambda _: notify(loop, queue.put_nowait, None))
        detok = Detokenizer(self.tokenizer(), sc.request.stop)
        return _deltas(queue, detok, sc)

    # -- drain ------------------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> int:
        """Refuse new work, let in-flight syscalls finish for ``timeout`` s, then shut the kernel
        down, which fails the rest with ``KernelShutdown``. Returns how many were still running."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass
        left = len(self.inflight)
        await asyncio.to_thread(self.kernel.shutdown)
        # their handlers answer now (typed failures); give them the loop to do it
        try:
            await asyncio.wait_for(self._idle.wait(), 30)
        except TimeoutError:
            log.error("%d syscalls never finished after kernel shutdown", len(self.inflight))
        return left

    # -- routes -------------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "draining" if self.draining else "ok",
                "model": self.model_id,
                "inflight": len(self.inflight),
                "uptime_s": round(time.time() - self.started_at, 3),
            },
            status_code=503 if self.draining else 200,
        )

    async def whoami(self, request: Request) -> Response:
        cred = self.authenticate(request)
        return JSONResponse(WhoAmI(agent=cred.agent, group=self.kernel.identities.group(cred.agent)).model_dump())

    async def syscall(self, request: Request) -> Response:
        cred = self.authenticate(request)
        call = await self.parse(request, CALL_ADAPTER)
        sc = self.submit(call.build(), cred)
        await self.finished(sc)
        return Response(SyscallOut.of(sc).model_dump_json(), media_type="application/json")

    async def syscall_stream(self, request: Request) -> Response:
        cred = self.authenticate(request)
        call = await self.parse(request, LLMSyscallBody)
        sc = call.build()
        deltas = await self.text_deltas(sc)
        self.submit(sc, cred)

        async def events() -> AsyncIterator[str]:
            async for text in deltas:
                yield sse(StreamEvent(type="delta", text=text).model_dump_json(exclude_none=True))
            yield sse(StreamEvent(type="syscall", syscall=SyscallOut.of(sc)).model_dump_json(exclude_none=True))

        return self.stream(request, events(), sc)

    def stream(self, request: Request, events: AsyncIterator[str], sc: Syscall) -> Response:
        """A server-sent-events response; a client that leaves mid-stream is audited (the syscall
        itself runs on: it was accepted, so it finishes and stays in the kernel's history)."""

        async def guarded() -> AsyncIterator[str]:
            complete = False
            try:
                async for event in events:
                    yield event
                complete = True
            finally:
                if not complete:
                    self.audit(cred_agent, request, "allowed",
                               f"client disconnected mid-stream; syscall {sc.id} runs to completion")  # fmt: skip

        cred_agent = getattr(request.state, "agent", "?")
        return StreamingResponse(
            guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


async def _deltas(queue: asyncio.Queue, detok: Detokenizer, sc: LLMSyscall) -> AsyncIterator[str]:
    while (tok := await queue.get()) is not None:
        if text := detok.push(tok):
            yield text
    if sc.result is not None and (rest := detok.finish(sc.result.text)):
        yield rest


def notify(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Hand ``fn(*args)`` to the event loop from a kernel thread. A loop that is gone (the server
    stopped) is not the kernel's problem: the engine thread must never see an exception from here."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def sse(data: str) -> str:
    return f"data: {data}\n\n"
