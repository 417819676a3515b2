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
Waiters are served strictly in arrival order (``FairSemaphore``), so no agent starves. Locks are
taken group first, then tool, always in that order, so two tools cannot deadlock each other.

Each call has a timeout. An in-process tool that hangs cannot be killed (Python threads cannot
be), so on timeout the caller gets ``ToolTimeout``, the slot is released and the stray thread is
left to finish on its own; tools that execute code therefore run in a subprocess with resource
limits (``run_sandboxed``), which is killed on timeout. A tool that raises or hangs fails only
its own syscall.
"""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import json
import operator
import os
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from aios.kernel.access import Resource
from aios.kernel.syscall import Syscall


class ToolError(Exception):
    """The tool itself raised: the message carries its exception type and text."""

    error_type = "ToolError"


class ToolNotFound(ToolError):
    error_type = "ToolNotFound"


class InvalidToolArguments(ToolError):
    error_type = "InvalidToolArguments"


class ToolTimeout(ToolError):
    error_type = "ToolTimeout"


class ToolBusy(ToolError):
    error_type = "ToolBusy"


# ---------------------------------------------------------------------------------------------
# Syscall
# ---------------------------------------------------------------------------------------------


class ToolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["call", "list"] = "call"
    name: str | None = Field(None, min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0, le=3600, description="at most the tool's own timeout")

    @model_validator(mode="after")
    def _check(self) -> ToolRequest:
        if self.op == "call" and self.name is None:
            raise ValueError("tool op 'call' needs a name")
        return self


class ToolSyscall(Syscall):
    kind: ClassVar[str] = "tool"
    request: ToolRequest


# ---------------------------------------------------------------------------------------------
# Fair queuing
# ---------------------------------------------------------------------------------------------


class FairSemaphore:
    """A counting semaphore that admits waiters strictly first-come, first-served."""

    def __init__(self, slots: int):
        self.slots = slots
        self._cv = threading.Condition()
        self._queue: deque[object] = deque()
        self._in_use = 0

    def acquire(self, timeout: float | None = None) -> bool:
        me = object()
        with self._cv:
            self._queue.append(me)
            ok = self._cv.wait_for(lambda: self._queue[0] is me and self._in_use < self.slots, timeout)
            if not ok:
                self._queue.remove(me)
                self._cv.notify_all()
                return False
            self._queue.popleft()
            self._in_use += 1
            self._cv.notify_all()
            return True

    def release(self) -> None:
        with self._cv:
            self._in_use -= 1
            self._cv.notify_all()

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._queue)


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
    def __init__(self, *, storage: Any = None, kernel: Any = None, queue_timeout: float = 300.0):
        self.storage = storage
        self.kernel = kernel
        self.queue_timeout = queue_timeout
        self._tools: dict[str, Tool] = {}
        self._slots: dict[str, FairSemaphore] = {}  # per tool (max_concurrency)
        self._groups: dict[str, FairSemaphore] = {}  # per exclusion group
        self._lock = threading.Lock()
        self.can_execute: Callable[[str, Tool], bool] = lambda agent, tool: (
            True
        )  # the access manager replaces it
        self.log_calls = True

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
                self._slots[tool.name] = FairSemaphore(max_concurrency)
            if tool.exclusive is not None:
                self._groups.setdefault(tool.exclusive, FairSemaphore(1))
        return tool

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tools.pop(name, None)
            self._slots.pop(name, None)

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

    # -- calls ------------------------------------------------------------------------------------
    def call(
        self, agent: str, name: str, arguments: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
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
        limit = min(timeout, tool.timeout) if timeout else tool.timeout
        held: list[FairSemaphore] = []
        try:
            for sem in (self._groups.get(tool.exclusive or ""), self._slots.get(tool.name)):
                if sem is not None:
                    if not sem.acquire(self.queue_timeout):
                        raise ToolBusy(f"{name}: waited {self.queue_timeout}s in the queue")
                    held.append(sem)
            started = time.time()
            result = self._run(tool, kwargs, limit)
            finished = time.time()
        finally:
            for sem in reversed(held):
                sem.release()
        if self.log_calls and self.storage is not None:
            self.storage.log_append(agent, "tool_call", {"tool": name, "elapsed": finished - started})
        return {"name": name, "result": result, "started": started, "finished": finished}

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
            if isinstance(exc, ToolError):
                raise exc
            raise ToolError(f"{tool.name} raised {type(exc).__name__}: {exc}") from exc
        return box.get("result")

    # -- syscalls ---------------------------------------------------------------------------------
    def resources(self, syscall: ToolSyscall) -> list[tuple[Resource, str]]:
        r = syscall.request
        if r.op == "list":
            return []
        tool = self._tools.get(r.name)
        return [(Resource("tool", tool.owner if tool else "?", r.name), "execute")]

    def handle(self, syscall: ToolSyscall) -> Any:
        r = syscall.request
        if r.op == "list":
            return self.list(syscall.agent)
        return self.call(syscall.agent, r.name, r.arguments, r.timeout)


# ---------------------------------------------------------------------------------------------
# Sandboxed code execution
# ---------------------------------------------------------------------------------------------

_LAUNCHER = """
import os, resource, sys
cpu, mem, fsize = {cpu}, {mem}, {fsize}
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
code = sys.stdin.read()
def _install():
    # all state lives in this closure; user code runs with its own globals and cannot reach it
    # (gc, frame introspection and function rewriting are refused below)
    realpath, isinst, str_, bytes_ = os.path.realpath, isinstance, str, bytes
    cwd = realpath(os.getcwd()) + os.sep
    ro = tuple(realpath(p) + os.sep for p in {{sys.prefix, sys.base_prefix, sys.exec_prefix}})
    deny = ("os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen", "ctypes.",
            "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link", "os.chdir", "os.fchdir",
            "os.chroot", "gc.", "sys._current_frames", "sys.setprofile", "sys.settrace",
            "sys.addaudithook", "code.__new__", "function.__new__", "cpython.")
    blocked = ("ctypes", "_ctypes", "socket", "_socket", "dbm", "_dbm", "_gdbm", "_posixsubprocess", "gc")
    special = ("__code__", "__defaults__", "__kwdefaults__", "__closure__", "__globals__")

    def inside(p, roots):
        return (realpath(p if isinst(p, str_) else p.decode()) + "/").startswith(roots)

    def guard(event, args):
        if event == "open":
            path, mode = args[0], args[1]
            if isinst(path, int) or inside(path, (cwd,)):
                return
            if (mode is None or "r" in str_(mode)) and "+" not in str_(mode or "") and inside(path, ro):
                return
            raise PermissionError("sandbox: no access to " + str_(path))
        if event.startswith(deny) or (event == "import" and args[0].split(".")[0] in blocked):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "object.__setattr__" and args[1] in special:
            raise PermissionError("sandbox: rewriting functions is not allowed")
        if event in ("os.listdir", "os.scandir"):
            if inside(str_(args[0] if args[0] is not None else "."), (cwd,) + ro):
                return
            raise PermissionError("sandbox: no access to " + str_(args[0]))
        if event.startswith(("os.", "shutil.", "sqlite3.connect")):  # other path arguments stay in cwd
            for a in args:
                if isinst(a, (str_, bytes_)) and a and not inside(a, (cwd,)):
                    raise PermissionError("sandbox: " + event + " outside the sandbox directory")

    sys.addaudithook(guard)
_install()
del resource, cpu, mem, fsize, _install
exec(compile(code, "<agent>", "exec"), {{"__name__": "__main__"}})
"""


def run_sandboxed(
    code: str, *, timeout: float = 5.0, memory_mb: int = 256, max_output: int = 65536
) -> dict[str, Any]:
    """Run Python ``code`` in a fresh, isolated interpreter with CPU, memory and file-size limits.

    The limits are set by the child itself before the code runs (``preexec_fn`` is unsafe in a
    threaded parent). It runs in an empty temporary directory with an empty environment, and is
    killed when ``timeout`` (wall clock) passes. An audit hook (which code cannot remove) confines
    file access to that directory (plus read-only access to the Python installation) and refuses
    process creation, ctypes and sockets: best effort, not a kernel-enforced jail: for hostile
    code, run the kernel itself in a container.
    """
    launcher = _LAUNCHER.format(cpu=max(1, int(timeout) + 1), mem=memory_mb << 20, fsize=1 << 20)
    with tempfile.TemporaryDirectory(prefix="aios-sandbox-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", launcher],
                input=code,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
            )
        except subprocess.TimeoutExpired as exc:  # subprocess.run kills the child
            raise ToolTimeout(f"python code did not finish within {timeout:g}s") from exc
    return {
        "returncode": proc.returncode,
        "stdout": proc.stdout[:max_output],
        "stderr": proc.stderr[-max_output:],
    }


# ---------------------------------------------------------------------------------------------
# Exact calculator (no eval: the AST is checked node by node, then built in sympy)
# ---------------------------------------------------------------------------------------------

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}
_FUNCS = (
    "sqrt", "exp", "log", "sin", "cos", "tan", "asin", "acos", "atan", "factorial", "binomial",
    "gcd", "lcm", "Abs", "floor", "ceiling", "Rational", "simplify", "expand", "factor", "diff",
    "integrate", "solve", "limit", "isprime", "N",
)  # fmt: skip
_NAMES = {"pi": "pi", "e": "E", "E": "E", "I": "I", "oo": "oo", "abs": "Abs", "ceil": "ceiling"}


def _to_sympy(node: ast.AST, sp: Any, depth: int = 0) -> Any:
    if depth > 50:
        raise ValueError("expression is nested too deeply")
    if isinstance(node, ast.Expression):
        return _to_sympy(node.body, sp, depth + 1)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return sp.Integer(node.value) if isinstance(node.value, int) else sp.Rational(repr(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _to_sympy(node.left, sp, depth + 1), _to_sympy(node.right, sp, depth + 1)
        if isinstance(node.op, ast.Pow) and right.is_number and abs(right) > 10_000:
            raise ValueError("exponent too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _to_sympy(node.operand, sp, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Name):
        if node.id in _NAMES:
            return getattr(sp, _NAMES[node.id])
        if node.id.isidentifier() and len(node.id) <= 3:  # a variable: x, y, n ...
            return sp.Symbol(node.id)
        raise ValueError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fname = _NAMES.get(node.func.id, node.func.id)
        if fname not in _FUNCS:
            raise ValueError(f"function {node.func.id!r} is not allowed")
        return getattr(sp, fname)(*[_to_sympy(a, sp, depth + 1) for a in node.args])
    raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")


def calculator(
    expression: Annotated[str, Field(max_length=500, description="e.g. '1/3 + 2**100' or 'sqrt(8)'")],
) -> Any:
    """Evaluate a math expression exactly (sympy): rationals stay exact; symbolic results allowed.

    Returns an int for integer results, otherwise the exact value as a string.
    """
    import sympy as sp

    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from exc
    value = sp.simplify(_to_sympy(tree, sp))
    if getattr(value, "is_Integer", False):
        return int(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Built-in tools
# ---------------------------------------------------------------------------------------------


def python(
    code: Annotated[
        str, Field(max_length=100_000, description="Python 3 source; print() what you want back")
    ],
    timeout: Annotated[float, Field(gt=0, le=30)] = 5.0,
) -> dict[str, Any]:
    """Run Python code in a sandboxed subprocess (CPU, memory and file-size limits) and return its output."""
    return run_sandboxed(code, timeout=timeout)


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
    tm.register(calculator, timeout=10, groups=everyone)
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
