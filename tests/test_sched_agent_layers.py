"""The layering rule: the sched_ext toolchain never imports the agents layer above it.

Why a test: the rule is easy to break with one convenient import (the ``aios sched optimize``
subcommand used to live in ``aios/sched_ext`` and imported the agent), and nothing else would
notice. Checked two ways: statically (every import statement in every module, including lazy ones
inside functions) and dynamically (importing every toolchain module in a fresh interpreter loads
no ``aios.agents`` module).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHED_EXT = ROOT / "aios" / "sched_ext"


def _imports(path: Path, package: str | None = None) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved in ``package``,
    by default the package the file sits in)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_resolver_sees_relative_and_lazy_imports(tmp_path):
    """The checker itself can fail: a lazy relative import of the agents layer is caught."""
    bad = tmp_path / "probe.py"
    bad.write_text("def f():\n    from ..agents import sched_agent\n    import aios.agents.base\n")
    found = _imports(bad, package="aios.sched_ext")
    assert "aios.agents.sched_agent" in found and "aios.agents.base" in found


def test_sched_ext_never_imports_agents_statically():
    offenders = {
        str(p.relative_to(ROOT)): [n for n in _imports(p) if n == "aios.agents" or n.startswith("aios.agents.")]
        for p in sorted(SCHED_EXT.rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"aios/sched_ext must not import aios.agents: {offenders}"


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
