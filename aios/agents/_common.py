"""Shared helpers of the example agents: robust parsing, the local data sets, kernel services.

The agents must run on any model the kernel serves, from SmolLM2 to a random-weight test model
that emits nonsense. So every parse here has a deterministic fallback and nothing raises on odd
model output; an agent only fails on a real kernel error.

``Services`` is how an agent reaches the tool, memory and storage managers. It uses the SDK calls
(``aios.sdk.calls``) when the kernel serves them, and otherwise falls back to a small in-process
equivalent held by the ``Services`` object itself (one per agent run, so no state is shared).
That keeps the agents usable on a bare kernel (an LLM core only) and in unit tests.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from functools import cache
from importlib import resources
from typing import Any

from aios.kernel.syscall import SyscallFailed, SyscallRejected

# ---------------------------------------------------------------------------------------------
# Parsing model output
# ---------------------------------------------------------------------------------------------

_EXPR_RE = re.compile(r"[\d\.\s\+\-\*/\(\)×÷^]+")


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line, stripped and cut to ``limit`` characters (or '')."""
    for line in text.splitlines():
        line = line.strip().strip("`").strip()
        if line:
            return line[:limit]
    return ""


def extract_expression(text: str) -> str | None:
    """The first arithmetic expression in ``text`` with a number and an operator (models write the
    expression first and its value after, as in ``12 * 3 = 36``)."""
    for m in _EXPR_RE.finditer(text.replace("×", "*").replace("÷", "/").replace("^", "**")):
        cand = m.group(0).strip()
        while cand and cand[-1] in "+-*/(.":
            cand = cand[:-1].rstrip()
        while cand and cand[0] in "*/).":
            cand = cand[1:].lstrip()
        if re.search(r"\d\s*[\+\-\*/]", cand) and safe_eval(cand) is not None:
            return cand
    return None


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def safe_eval(expr: str) -> float | None:
    """Evaluate + - * / ** on numbers only (no names, no calls); None when it is not that."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 16:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("not arithmetic")

    try:
        value = ev(ast.parse(expr.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    return round(value, 6) if isinstance(value, float) else value


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (``{}`` when there is none or it does not parse)."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        out = json.loads(text[start : i + 1])
                        return out if isinstance(out, dict) else {}
                    except json.JSONDecodeError:
                        break
        start = text.find("{", start + 1)
    return {}


def keywords(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters and hyphens), in order, without duplicates."""
    seen: dict[str, None] = {}
    for w in re.findall(r"[a-z][a-z\-]+", text.lower()):
        seen.setdefault(w, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Data sets shipped with the package
# ---------------------------------------------------------------------------------------------


@cache
def load_data(name: str) -> dict[str, Any]:
    """A JSON data set from ``aios/agents/data`` (read once; the result is never mutated)."""
    return json.loads(resources.files("aios.agents").joinpath("data", name).read_text())


# ---------------------------------------------------------------------------------------------
# Kernel services with fallbacks
# ---------------------------------------------------------------------------------------------


def _calls():
    try:
        from aios.sdk import calls
    except ImportError:
        return None
    return calls


class Services:
    """Tool, memory and storage access for one agent run (see the module docstring)."""

    def __init__(self) -> None:
        self._calls = _calls()
        self._local_store: dict[str, str] = {}
        self._local_memory: list[str] = []
        self.used: dict[str, str] = {}  # which service answered: "kernel" or "local"

    def _try(self, fn_name: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        fn = getattr(self._calls, fn_name, None) if self._calls is not None else None
        if fn is None:
            return False, None
        try:
            return True, fn(*args, **kwargs)
        except SyscallRejected:  # this kernel has no such module
            return False, None
        except SyscallFailed as exc:
            if exc.error is not None and exc.error.type in {"PermissionDenied", "AccessDenied"}:
                raise
            return False, None

    def calculate(self, expression: str) -> float | None:
        ok, out = self._try("tool_call", "calculator", {"expression": expression})
        if ok:
            self.used["calculator"] = "kernel"
            value = out.get("result", out) if isinstance(out, dict) else out
            if isinstance(value, int | float):
                return value
            exact = safe_eval(str(value))  # sympy's exact form, e.g. "7/2"
            return exact if exact is not None else safe_eval(expression)
        self.used["calculator"] = "local"
        return safe_eval(expression)

    def remember(self, text: str) -> None:
        ok, _ = self._try("memory_add", text)
        self.used["memory"] = "kernel" if ok else "local"
        if not ok:
            self._local_memory.append(text)

    def recall(self, query: str, k: int = 3) -> list[str]:
        ok, out = self._try("memory_search", query, k=k)
        if ok:
            return [o.get("content", str(o)) if isinstance(o, dict) else str(o) for o in out or []]
        words = set(keywords(query))
        scored = sorted(self._local_memory, key=lambda m: -len(words & set(keywords(m))))
        return scored[:k]

    def store(self, key: str, content: str) -> None:
        ok, _ = self._try("storage_put", key, content)
        self.used["storage"] = "kernel" if ok else "local"
        if not ok:
            self._local_store[key] = content

    def load(self, key: str) -> str | None:
        ok, out = self._try("storage_get", key)
        if ok:
            return out.get("content") if isinstance(out, dict) else out
        return self._local_store.get(key)
