"""The layering rules: a lower layer never imports a higher one, and no module import cycles.

Why a test: each rule is easy to break with one convenient import (the ``aios sched optimize``
subcommand used to live in ``aios/sched_ext`` and imported the agent; the service's CLI imported
the top-level CLI), and nothing else would notice. Checked statically, from every import statement
in every module, lazy ones inside functions included (``if TYPE_CHECKING:`` imports are not run and
do not count); and, for the toolchain, dynamically: importing every ``aios.sched_ext`` module in a
fresh interpreter loads no ``aios.agents`` module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIOS = ROOT / "aios"
SCHED_EXT = AIOS / "sched_ext"

# What each subpackage (or top-level module) of ``aios`` may import, besides itself and the ``aios``
# package. Lower layers first; a new edge is a design decision: add it here on purpose.
ALLOWED = {
    "cache": set(),
    "cpuinfo": set(),
    "kernel": {"cache", "cpuinfo"},
    "sdk": {"cache", "kernel"},
    "service": {"cache", "kernel", "sdk"},
    "sched_ext": {"cache", "kernel"},
    "bench": {"cache", "cpuinfo"},
    "agents": {"cache", "kernel", "sdk", "sched_ext"},
    "cli": {"cache", "kernel", "sdk", "service", "sched_ext", "bench", "agents"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str | None = None) -> list[str]:
    """Absolute names of every module ``path`` imports at run time (relative imports resolved in
    ``package``, by default the package the file sits in; ``TYPE_CHECKING`` blocks skipped)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(AIOS.rglob("*.py")) if "include" not in p.parts}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "aios" and len(parts) > 1 else None


def test_resolver_sees_relative_and_lazy_imports_but_not_typing_only_ones(tmp_path):
    """The checker itself can fail: a lazy relative import of the agents layer is caught."""
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aios.cli\n"
        "def f():\n    from ..agents import sched_agent\n    import aios.agents.base\n"
    )
    found = _imports(bad, package="aios.sched_ext")
    assert "aios.agents.sched_agent" in found and "aios.agents.base" in found
    assert "aios.cli" not in found


def _layer_offenders(modules: dict[str, Path]) -> dict[str, list[str]]:
    offenders = {}
    for name, path in modules.items():
        src = _layer(name)
        if src is None:
            continue  # the aios package itself re-exports the public API of every layer
        allowed = ALLOWED[src] | {None, src, "__version__"}
        bad = sorted({n for n in _imports(path, name.rpartition(".")[0] if path.name != "__init__.py" else name)
                      if _layer(n) not in allowed})  # fmt: skip
        if bad:
            offenders[name] = bad
    return offenders


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        targets = {resolve(n) for n in _imports(path)} - {None, name}
        # a module's own enclosing packages are always imported before it: not a dependency edge
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done, stack = [], set(), []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)
    return cycles


def test_the_checks_can_fail(tmp_path):
    """A kernel module importing the SDK lazily is an offender; a two-module loop is a cycle."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from aios.sdk import calls\n")
    assert _layer_offenders({"aios.kernel.probe": probe}) == {"aios.kernel.probe": ["aios.sdk", "aios.sdk.calls"]}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_every_layer_imports_only_the_layers_below_it():
    modules = _modules()
    layers = {_layer(m) for m in modules} - {None}
    assert layers <= set(ALLOWED), f"a new part of aios needs its place in ALLOWED: {layers - set(ALLOWED)}"
    offenders = _layer_offenders(modules)
    assert not offenders, f"imports from a higher layer: {offenders}"


def test_no_import_cycles_between_modules():
    cycles = _cycles(_import_graph(_modules()))
    assert not cycles, f"import cycles: {cycles}"


def test_importing_every_toolchain_module_loads_no_agent():
    modules = sorted(
        "aios.sched_ext." + ".".join(p.relative_to(SCHED_EXT).with_suffix("").parts)
        for p in SCHED_EXT.rglob("*.py")
        if p.name != "__init__.py" and "include" not in p.parts
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(n for n in sys.modules if n.startswith('aios.agents')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
    assert len(modules) > 10  # every module was imported, not none
