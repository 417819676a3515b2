"""OpenAI-compatible routes: ``POST /v1/chat/completions`` (streaming or not) and ``GET /v1/models``.

Why: every agent framework speaks this API. Here each request is one LLM syscall of the agent the
API key (= the agent's kernel-issued token) names, scheduled with every other agent's syscalls;
nothing bypasses the kernel.

Translation, both ways:
- request: ``max_completion_tokens``/``max_tokens`` -> ``max_new_tokens``, ``stop`` (a string or a
  list), ``temperature`` (default **0, greedy**, not OpenAI's 1: reproducible unless asked),
  ``top_p``, ``seed``, ``tools`` and ``tool_choice`` (``auto``/``none``), and the kernel's own
  fields through the client's ``extra_body``: ``priority`` (lower first, as with vLLM), ``top_k``,
  ``expected_tokens``, ``num_beams``, ``length_penalty``, ``choices``, ``retrieve_k``. ``n`` must
  be 1 and the penalties 0; ``user`` is ignored (the key says who is asking). Anything else is
  refused with 422 naming the field, so a typo never silently changes the request.
- response: ``finish_reason`` ``stop`` (eos, stop string or choice), ``length`` or ``tool_calls``;
  ``usage``; and an ``aios`` object with the syscall's id, waiting and turnaround times.
- streaming: ``chat.completion.chunk`` events as tokens are sampled (a request with tools is
  answered in one chunk at the end: its text may turn out to be a tool call), ``usage`` when
  ``stream_options.include_usage``, then ``data: [DONE]``. A failure mid-stream is an ``error``
  event, which the ``openai`` client raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aios.kernel.syscall import LLMRequest, LLMSyscall, Message, SyscallStatus, ToolCall
from aios.service.errors import ServiceError, invalid

if TYPE_CHECKING:
    from aios.service.app import Service

# typed kernel errors -> HTTP statuses (anything else is a 500)
ERROR_STATUS = {
    "PermissionDenied": 403,
    "AuthenticationFailed": 401,
    "NotFound": 404,
    "ContextTooLong": 400,
    "ToolCallError": 400,
    "QuotaExceeded": 429,
    "KernelShutdown": 503,
}


class _Function(BaseModel):
    name: str
    arguments: str = "{}"


class _ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _Function


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_message(self) -> Message:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        calls = None
        if self.tool_calls:
            calls = []
            for tc in self.tool_calls:
                try:
                    args = json.loads(tc.function.arguments or "{}")
                except json.JSONDecodeError as exc:
                    raise ValueError(f"tool call {tc.id}: arguments are not JSON ({exc.msg})") from None
                calls.append(ToolCall(id=tc.id, name=tc.function.name, arguments=args))
        role = "system" if self.role == "developer" else self.role
        return Message(role=role, content=content or "", name=self.name, tool_calls=calls,
                       tool_call_id=self.tool_call_id)  # fmt: skip


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None
    n: Literal[1] | None = None
    user: str | None = None  # OpenAI's end-user tag: ignored, the API key names the agent
    frequency_penalty: Literal[0] | None = None
    presence_penalty: Literal[0] | None = None
    # the kernel's own fields (``extra_body`` in the openai client)
    priority: int | None = None
    top_k: int | None = None
    expected_tokens: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    choices: list[str] | None = None
    retrieve_k: int | None = None

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for t in tools or []:
            if t.get("type") != "function" or not isinstance(t.get("function"), dict) or not t["function"].get("name"):
                raise ValueError("each tool must be {'type': 'function', 'function': {'name': ..., ...}}")
        return tools

    def to_llm_request(self) -> LLMRequest:
        fields: dict[str, Any] = {
            "messages": [m.to_message() for m in self.messages],
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "tools": None if self.tool_choice == "none" else self.tools,
        }
        for name in ("temperature", "top_p", "seed", "priority", "top_k", "expected_tokens", "num_beams",
                     "length_penalty", "choices", "retrieve_k"):  # fmt: skip
            fields[name] = getattr(self, name)
        return LLMRequest(**{k: v for k, v in fields.items() if v is not None})


# -- responses ---------------------------------------------------------------------------------------
def _finish_reason(sc: LLMSyscall) -> str:
    r = sc.result
    if r.tool_calls:
        return "tool_calls"
    return "length" if r.finish_reason == "length" else "stop"


def _tool_calls_out(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"index": i, "id": c.id, "type": "function",
         "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for i, c in enumerate(calls)
    ]  # fmt: skip


def _usage(sc: LLMSyscall) -> dict[str, int]:
    r = sc.result
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}  # fmt: skip


def _aios(sc: LLMSyscall) -> dict[str, Any]:
    return {"syscall_id": sc.id, "agent": sc.agent, "priority": sc.request.priority, "waiting_time": sc.waiting_time,
            "turnaround_time": sc.turnaround_time, "preemptions": sc.result.preemptions if sc.result else 0}  # fmt: skip


def completion(sc: LLMSyscall, model: str) -> dict[str, Any]:
    r = sc.result
    message: dict[str, Any] = {"role": "assistant", "content": None if r.tool_calls else r.text}
    if r.tool_calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in _tool_calls_out(r.tool_calls)]
    return {
        "id": f"chatcmpl-{sc.id}",
        "object": "chat.completion",
        "created": int(sc.created_at),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(sc), "logprobs": None}],
        "usage": _usage(sc),
        "aios": _aios(sc),
    }


def _chunk(sc: LLMSyscall, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": f"chatcmpl-{sc.id}",
        "object": "chat.completion.chunk",
        "created": int(sc.created_at),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


def failure_status(sc: LLMSyscall) -> int:
    return ERROR_STATUS.get(sc.error.type, 500) if sc.error else 500


# -- routes ----------------------------------------------------------------------------------------------
def routes(service: Service) -> list[Route]:
    async def models(request: Request) -> Response:
        service.authenticate(request)
        return JSONResponse({"object": "list", "data": [
            {"id": service.model_id, "object": "model", "created": int(service.started_at), "owned_by": "aios"}
        ]})  # fmt: skip

    async def chat_completions(request: Request) -> Response:
        cred = service.authenticate(request)
        body: ChatCompletionRequest = await service.parse(request, ChatCompletionRequest)
        if body.model not in (service.model_id, str(service.kernel.config.model)):
            raise ServiceError(404, "NotFound", f"model {body.model!r} is not served here; GET /v1/models "
                               f"lists {service.model_id!r}", param="model")  # fmt: skip
        try:
            req = body.to_llm_request()
        except ValidationError as exc:
            raise invalid(exc) from None
        except ValueError as exc:
            raise ServiceError(422, "InvalidRequest", str(exc), param="messages") from None
        sc = LLMSyscall(request=req)
        if not body.stream:
            service.submit(sc, cred)
            await service.finished(sc)
            if sc.status is not SyscallStatus.DONE:
                raise ServiceError(failure_status(sc), sc.error.type, sc.error.message)
            return JSONResponse(completion(sc, body.model))
        deltas = await service.text_deltas(sc)
        service.submit(sc, cred)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return service.stream(request, _chunks(sc, body.model, deltas, buffer=bool(req.tools), usage=usage), sc)

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]


async def _chunks(
    sc: LLMSyscall, model: str, deltas: AsyncIterator[str], *, buffer: bool, usage: bool
) -> AsyncIterator[str]:
    yield _chunk(sc, model, {"role": "assistant", "content": ""})
    async for text in deltas:
        if not buffer:
            yield _chunk(sc, model, {"content": text})
    if sc.status is not SyscallStatus.DONE:
        err = {"message": sc.error.message, "type": sc.error.type, "code": failure_status(sc), "param": None}
        yield f"data: {json.dumps({'error': err})}\n\n"
        return
    r = sc.result
    if buffer and r.tool_calls:
        yield _chunk(sc, model, {"tool_calls": _tool_calls_out(r.tool_calls)})
    elif buffer and r.text:
        yield _chunk(sc, model, {"content": r.text})
    yield _chunk(sc, model, {}, _finish_reason(sc))
    if usage:
        body = {"id": f"chatcmpl-{sc.id}", "object": "chat.completion.chunk", "created": int(sc.created_at),
                "model": model, "choices": [], "usage": _usage(sc), "aios": _aios(sc)}  # fmt: skip
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


__all__ = ["ChatCompletionRequest", "completion", "routes"]
