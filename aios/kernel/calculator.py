"""The exact calculator tool, evaluated in a worker process the kernel can kill.

Why a process: a big-integer power or a symbolic ``integrate`` runs in C holding the GIL, so done
in the kernel's interpreter one ``calculator`` call froze every agent for seconds. Here the kernel
only parses the expression (``ast``, cheap, bounded by its 500-character limit) and sends it to a
worker process (one per tool manager, started at first use, sympy imported once). A call that
does not finish within its timeout kills the worker, which is started again for the next call;
the worker's own address space and output size are bounded, so no expression can grow the kernel.

The expression is never ``eval``'d: the AST is checked node by node and built in sympy.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import subprocess
import sys
import threading
from typing import Annotated, Any

from pydantic import Field

MAX_RESULT = 100_000  # characters of a result (an exact value can be long, not unbounded)

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


class CalculatorTimeout(Exception):
    error_type = "ToolTimeout"


class CalculatorError(Exception):
    error_type = "ToolError"


def _to_sympy(node: ast.AST, sp: Any, depth: int = 0) -> Any:
    """Build ``node`` in sympy; with ``sp=None`` only check that it may be built (in the kernel)."""
    if depth > 50:
        raise ValueError("expression is nested too deeply")
    if isinstance(node, ast.Expression):
        return _to_sympy(node.body, sp, depth + 1)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        if sp is None:
            return None
        return sp.Integer(node.value) if isinstance(node.value, int) else sp.Rational(repr(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _to_sympy(node.left, sp, depth + 1), _to_sympy(node.right, sp, depth + 1)
        if sp is None:
            return None
        if isinstance(node.op, ast.Pow) and right.is_number and abs(right) > 10_000:
            raise ValueError("exponent too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _to_sympy(node.operand, sp, depth + 1)
        return v if sp is None or isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.Name):
        if node.id in _NAMES:
            return None if sp is None else getattr(sp, _NAMES[node.id])
        if node.id.isidentifier() and len(node.id) <= 3:  # a variable: x, y, n ...
            return None if sp is None else sp.Symbol(node.id)
        raise ValueError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fname = _NAMES.get(node.func.id, node.func.id)
        if fname not in _FUNCS:
            raise ValueError(f"function {node.func.id!r} is not allowed")
        args = [_to_sympy(a, sp, depth + 1) for a in node.args]
        return None if sp is None else getattr(sp, fname)(*args)
    raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")


def parse(expression: str) -> ast.Expression:
    try:
        return ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from exc


def evaluate(expression: str) -> int | str:
    """Evaluate in this process (the worker's side). An int for integer results, else a string."""
    import sympy as sp

    value = sp.simplify(_to_sympy(parse(expression), sp))
    if getattr(value, "is_Integer", False):
        if int(value).bit_length() > MAX_RESULT * 3.32:  # about MAX_RESULT decimal digits
            raise ValueError(f"result has more than {MAX_RESULT} digits")
        return int(value)
    out = str(value)
    if len(out) > MAX_RESULT:
        raise ValueError(f"result is longer than {MAX_RESULT} characters")
    return out


def serve() -> None:
    """The worker's loop: one JSON request per line in, one JSON answer per line out."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.set_int_max_str_digits(MAX_RESULT + 10)
    import sympy  # noqa: F401 - imported once, before the first request

    out = sys.stdout
    out.write("ready\n")  # the kernel times requests from here: start-up is not a request's cost
    out.flush()
    for line in sys.stdin:
        try:
            answer = {"ok": evaluate(json.loads(line)["expression"])}
        except MemoryError:
            answer = {"error": "MemoryError", "message": "the expression needs too much memory"}
        except Exception as exc:  # a bad expression fails its call; the worker carries on
            answer = {"error": type(exc).__name__, "message": str(exc)[:1000]}
        out.write(json.dumps(answer) + "\n")
        out.flush()


class Calculator:
    """One worker process per tool manager; calls are serialised (the tool has one slot)."""

    def __init__(self, timeout: float = 10.0, startup_timeout: float = 120.0):
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self.restarts = 0

    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from aios.kernel.calculator import serve; serve()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            if self._exchange(None, self.startup_timeout) != "ready\n":
                self._kill()
                raise CalculatorError("the calculator worker did not start")
        return self._proc

    def _exchange(self, request: str | None, timeout: float) -> str | None:
        """Send one line (or none) and read one, on a helper thread; None if it took too long."""
        proc, box = self._proc, {}

        def io() -> None:
            try:
                if request is not None:
                    proc.stdin.write(request + "\n")
                    proc.stdin.flush()
                box["line"] = proc.stdout.readline(4 * MAX_RESULT)
            except (OSError, ValueError) as exc:
                box["line"] = json.dumps({"error": "WorkerError", "message": str(exc)})

        th = threading.Thread(target=io, name="aios-calculator-io", daemon=True)
        th.start()
        th.join(timeout)
        return None if th.is_alive() else box.get("line", "")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
            self._proc = None
            self.restarts += 1

    def calculator(
        self,
        expression: Annotated[str, Field(max_length=500, description="e.g. '1/3 + 2**100' or 'sqrt(8)'")],
    ) -> Any:
        """Evaluate a math expression exactly (sympy): rationals stay exact; symbolic results allowed.

        Returns an int for integer results, otherwise the exact value as a string.
        """
        _to_sympy(parse(expression), None)  # bad syntax and names answered here, without the worker
        with self._lock:
            self._worker()
            line = self._exchange(json.dumps({"expression": expression}), self.timeout)
            if line is None:
                self._kill()  # the helper thread's pipe closes with it
                raise CalculatorTimeout(f"calculator did not finish within {self.timeout:g}s (worker restarted)")
            if not line.endswith("\n"):
                self._kill()
                raise CalculatorError("the calculator worker died (memory or output limit)")
        answer = json.loads(line)
        if "error" in answer:
            raise CalculatorError(f"{answer['error']}: {answer['message']}")
        return answer["ok"]

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill()
