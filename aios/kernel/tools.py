"""Tool manager: a registry of typed Python callables that agents run through tool syscalls.

A tool is a function whose annotated (or pydantic) parameters give its JSON schema, in the
OpenAI function-calling shape (``{"type": "function", "function": {name, description,
parameters}}``); arguments are validated against it before the function runs. A parameter
annotated ``ToolContext`` is not part of the schema: the manager fills it with the calling agent
and the kernel's storage, which is how built-ins like ``file_read`` stay inside the caller's own
namespace.

Conflicts are handled like OS resources:
- ``max_concurrency``: at most that many calls of the tool run at once;
- ``exclusive``: a mutual-exclusion group name (``True`` means the tool's own name); tools sharing
  a group never run at the same time.
A call that must wait holds no thread: it is a record in the ``ToolQueue`` (``tool_queue.py``),
served round robin across agents, so one agent's backlog cannot starve another agent.

Each call has a timeout. An in-process tool that hangs cannot be killed (Python threads cannot
be), so on timeout the caller gets ``ToolTimeout``, the slot is released and the stray thread is
left to finish on its own. Everything that can run long or big therefore runs in another process
the kernel kills: model-written code in the namespace sandbox (``sandbox.py``), the calculator in
its worker (``calculator.py``). A tool that raises or hangs fails only its own syscall.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from aios.kernel.access import Resource
from aios.kernel.calculator import Calculator
from aios.kernel.sandbox import SandboxLimits, run_sandboxed
from aios.kernel.syscall import DEFERRED, Request, Syscall
from aios.kernel.tool_queue import ToolBusy as ToolBusy  # re-exported: callers catch it from here
from aios.kernel.tool_queue import ToolQueue


class ToolError(Exception):
    """The tool itself raised: the message carries its exception type and text."""

    error_type = "ToolError"


class ToolNotFound(ToolError):
    error_type = "ToolNotFound"


class InvalidToolArguments(ToolError):
    error_type = "InvalidToolArguments"


class ToolTimeout(ToolError):
    error_type = "ToolTimeout"


# ---------------------------------------------------------------------------------------------
# Syscall
# ---------------------------------------------------------------------------------------------


class CallTool(Request):
    op: Literal["call"] = "call"
    name: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0, le=3600, description="at most the tool's own timeout")


class ListTools(Request):
    op: Literal["list"] = "list"


ToolRequest = Annotated[CallTool | ListTools, Field(discriminator="op")]


class ToolSyscall(Syscall):
    kind: ClassVar[str] = "tool"
    request: ToolRequest


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


@dataclass
class ToolContext:
    """What a tool may know about its caller (injected, never taken from the model's arguments)."""

    agent: str
    storage: Any = None
    kernel: Any = None


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    params: type[BaseModel]
    ctx_param: str | None = None
    model_param: str | None = None  # the function takes one pydantic model instead of kwargs
    max_concurrency: int | None = None
    exclusive: str | None = None
    timeout: float = 30.0
    groups: set[str] = field(default_factory=lambda: {"user", "admin"})
    owner: str = "kernel"

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling description of this tool."""
        params = self.params.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


def _describe(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def make_tool(fn: Callable[..., Any], name: str | None = None, **options: Any) -> Tool:
    """Build a ``Tool`` from a function's signature (annotations, defaults, ``Annotated`` fields)."""
    name = name or fn.__name__
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:  # string annotations naming something local to a function
        raise TypeError(
            f"tool {name}: cannot resolve its annotations ({exc}); define the types at module level"
        ) from exc
    sig = inspect.signature(fn)
    fields: dict[str, Any] = {}
    ctx_param = model_param = None
    for pname, p in sig.parameters.items():
        ann = hints.get(pname, Any)
        if ann is ToolContext:
            ctx_param = pname
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {name}: *args/**kwargs have no schema")
        fields[pname] = (ann, ... if p.default is p.empty else p.default)
    if len(fields) == 1:
        ((only, (ann, _)),) = fields.items()
        if inspect.isclass(ann) and issubclass(ann, BaseModel):
            model_param, params = only, ann
    if model_param is None:
        params = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return Tool(
        name, fn, options.pop("description", None) or _describe(fn), params, ctx_param, model_param, **options
    )


class ToolManager:
    def __init__(
        self,
        *,
        storage: Any = None,
        kernel: Any = None,
        queue_timeout: float = 300.0,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ):
        self.storage = storage
        self.kernel = kernel
        self._tools: dict[str, Tool] = {}
        self._lock = threading.Lock()
        # where a queued call runs once admitted: the kernel's pool (a thread of its own without one)
        self.queue = ToolQueue(spawn or _thread_spawn, max_wait=queue_timeout)
        self.can_execute: Callable[[str, Tool], bool] = lambda agent, tool: (
            True
        )  # the access manager replaces it
        self.log_calls = True
        self._closers: list[Callable[[], None]] = []

    # -- registry ---------------------------------------------------------------------------------
    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        max_concurrency: int | None = None,
        exclusive: bool | str = False,
        timeout: float = 30.0,
        groups: set[str] | tuple[str, ...] = ("user", "admin"),
        owner: str = "kernel",
    ) -> Tool:
        tool = make_tool(
            fn,
            name,
            description=description,
            max_concurrency=max_concurrency,
            exclusive=(name or fn.__name__) if exclusive is True else (exclusive or None),
            timeout=timeout,
            groups=set(groups),
            owner=owner,
        )
        if not tool.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"tool name {tool.name!r}: letters, digits, '_' and '-' only")
        with self._lock:
            if tool.name in self._tools:
                raise ValueError(f"a tool named {tool.name!r} is already registered")
            self._tools[tool.name] = tool
            if max_concurrency is not None:
                self.queue.set_capacity(f"tool:{tool.name}", max_concurrency)
            if tool.exclusive is not None:
                self.queue.set_capacity(f"group:{tool.exclusive}", 1)
        return tool

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tools.pop(name, None)
            self.queue.drop_capacity(f"tool:{name}")

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolNotFound(f"no tool {name!r}")
        return tool

    def info(self, name: str) -> tuple[str, set[str]] | None:
        """(owner, groups) of a tool, for the access manager."""
        tool = self._tools.get(name)
        return None if tool is None else (tool.owner, tool.groups)

    def list(self, agent: str) -> list[dict[str, Any]]:
        """Schemas of the tools ``agent`` may run (what an LLM syscall's ``tools`` takes)."""
        return [
            t.schema()
            for t in sorted(self._tools.values(), key=lambda t: t.name)
            if self.can_execute(agent, t)
        ]

    @staticmethod
    def keys(tool: Tool, agent: str) -> tuple[str, ...]:
        """The queue slots a call of ``tool`` by ``agent`` needs: always one of the agent's running
        slots, plus the tool's exclusion group and concurrency slot when it has them."""
        keys = (f"agent:{agent}",) + (() if tool.exclusive is None else (f"group:{tool.exclusive}",))
        return keys + (() if tool.max_concurrency is None else (f"tool:{tool.name}",))

    # -- calls ------------------------------------------------------------------------------------
    def _prepare(
        self, agent: str, name: str, arguments: dict[str, Any], timeout: float | None
    ) -> tuple[Tool, dict[str, Any], float]:
        tool = self.get(name)
        try:
            args = tool.params.model_validate(arguments)
        except ValidationError as exc:
            raise InvalidToolArguments(
                f"{name}: {exc.error_count()} invalid argument(s): {exc.errors(include_url=False)}"
            ) from exc
        if tool.model_param:
            kwargs: dict[str, Any] = {tool.model_param: args}
        else:
            kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if tool.ctx_param:
            kwargs[tool.ctx_param] = ToolContext(agent, self.storage, self.kernel)
        return tool, kwargs, min(timeout, tool.timeout) if timeout else tool.timeout

    def _execute(self, agent: str, tool: Tool, kwargs: dict[str, Any], limit: float) -> dict[str, Any]:
        started = time.time()
        result = self._run(tool, kwargs, limit)
        finished = time.time()
        if self.log_calls and self.storage is not None:
            self.storage.log_append(agent, "tool_call", {"tool": tool.name, "elapsed": finished - started})
        return {"name": tool.name, "result": result, "started": started, "finished": finished}

    def start(
        self,
        agent: str,
        name: str,
        arguments: dict[str, Any],
        timeout: float | None,
        done: Callable[[dict[str, Any] | None, Exception | None], None],
    ) -> None:
        """Queue a call without holding this thread; ``done(result, error)`` is called from the pool
        once it ran. Bad arguments (and a full queue) raise here."""
        tool, kwargs, limit = self._prepare(agent, name, arguments, timeout)
        keys = self.keys(tool, agent)

        def run() -> None:
            try:
                out, err = self._execute(agent, tool, kwargs, limit), None
            except Exception as exc:
                out, err = None, exc
            finally:
                self.queue.release(keys)
            done(out, err)

        self.queue.submit(agent, keys, run, lambda exc: done(None, exc))

    def call(
        self, agent: str, name: str, arguments: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Run a tool and wait for it (scripts and tests; syscalls go through ``handle``)."""
        box: dict[str, Any] = {}
        finished = threading.Event()

        def done(out: dict[str, Any] | None, err: Exception | None) -> None:
            box.update(out=out, err=err)
            finished.set()

        self.start(agent, name, arguments, timeout, done)
        finished.wait()
        if box["err"] is not None:
            raise box["err"]
        return box["out"]

    @staticmethod
    def _run(tool: Tool, kwargs: dict[str, Any], timeout: float) -> Any:
        """Run in a helper thread so a hang becomes ``ToolTimeout`` for this caller only."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = tool.fn(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - any failure belongs to the caller
                box["error"] = exc

        th = threading.Thread(target=target, name=f"aios-tool-{tool.name}", daemon=True)
        th.start()
        th.join(timeout)
        if th.is_alive():
            raise ToolTimeout(f"{tool.name} did not finish within {timeout:g}s")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, ToolError) or hasattr(exc, "error_type"):  # typed already: keep its type
                raise exc
            raise ToolError(f"{tool.name} raised {type(exc).__name__}: {exc}") from exc
        return box.get("result")

    # -- syscalls ---------------------------------------------------------------------------------
    def resources(self, syscall: ToolSyscall) -> list[tuple[Resource, str]]:
        r = syscall.request
        if isinstance(r, ListTools):
            return []
        tool = self._tools.get(r.name)
        return [(Resource("tool", tool.owner if tool else "?", r.name), "execute")]

    def handle(self, syscall: ToolSyscall) -> Any:
        r = syscall.request
        if isinstance(r, ListTools):
            return self.list(syscall.agent)

        def done(out: dict[str, Any] | None, err: Exception | None) -> None:
            if err is None:
                syscall.complete(out)
            else:
                syscall.fail(getattr(err, "error_type", type(err).__name__), str(err))

        self.start(syscall.agent, r.name, r.arguments, r.timeout, done)
        return DEFERRED  # ``done`` completes the syscall once the call ran

    def close(self) -> None:
        self.queue.close()
        for close in self._closers:
            close()


def _thread_spawn(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="aios-tool-call", daemon=True).start()


# ---------------------------------------------------------------------------------------------
# Built-in tools
# ---------------------------------------------------------------------------------------------


def python(
    code: Annotated[
        str, Field(max_length=100_000, description="Python 3 source; print() what you want back")
    ],
    timeout: Annotated[float, Field(gt=0, le=30)] = 5.0,
) -> dict[str, Any]:
    """Run Python code in an OS sandbox (no network, no files but its own, CPU/memory limits); returns its output."""
    return run_sandboxed(code, SandboxLimits(timeout=timeout))


def current_time(
    timezone: Annotated[str, Field(description="IANA name, e.g. 'Europe/Paris'")] = "UTC",
) -> str:
    """The current date and time, ISO 8601, in the given time zone."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    return dt.datetime.now(tz).isoformat(timespec="seconds")


def file_read(path: Annotated[str, Field(max_length=1024)], ctx: ToolContext) -> str:
    """Read one of your own files (UTF-8 text)."""
    return ctx.storage.file_read(ctx.agent, path).decode("utf-8", errors="replace")


def file_write(
    path: Annotated[str, Field(max_length=1024)], content: str, ctx: ToolContext
) -> dict[str, Any]:
    """Write (create or replace) one of your own files."""
    return ctx.storage.file_write(ctx.agent, path, content.encode())


def file_list(ctx: ToolContext, prefix: str = "") -> list[dict[str, Any]]:
    """List your own files (path, size, sha256)."""
    return ctx.storage.file_list(ctx.agent, prefix)


def storage_search(
    query: Annotated[str, Field(max_length=8192)], ctx: ToolContext, k: Annotated[int, Field(ge=1, le=20)] = 5
) -> list[dict]:
    """Search your own stored items by meaning; returns the best matches first."""
    return [
        {"key": it["key"], "content": it["content"], "score": it["score"]}
        for it in ctx.storage.search(ctx.agent, query, k)
    ]


def install_builtins(tm: ToolManager) -> None:
    """Register the offline built-in tools."""
    everyone = ("admin", "user", "guest")
    calc = Calculator(timeout=10)  # one worker process per tool manager (so per kernel)
    # its own bounds: 10 s per expression (then the worker is killed), 120 s to start a worker
    tm.register(calc.calculator, name="calculator", timeout=150, max_concurrency=1, groups=everyone)
    tm._closers.append(calc.close)
    tm.register(current_time, timeout=5, groups=everyone)
    # code execution: a few at a time, each in its own limited subprocess
    tm.register(python, timeout=35, max_concurrency=max(1, (os.cpu_count() or 2) // 2))
    tm.register(file_read, timeout=10)
    tm.register(file_write, timeout=10)
    tm.register(file_list, timeout=10)
    tm.register(storage_search, timeout=30)


def tool_result_message(call_id: str, result: Any) -> dict[str, Any]:
    """An OpenAI-style ``tool`` message carrying a tool's result back to the model."""
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "content": result if isinstance(result, str) else json.dumps(result, default=str),
    }
