"""Do, before load, what an upstream sched_ext loader does to its object: SCX enums, tunables, array sizes.

Why: upstream schedulers (the kernel's ``tools/sched_ext``) come as a BPF
object plus a small C loader that, between ``SCX_OPS_OPEN`` and
``SCX_OPS_LOAD``, fills read-only globals: the SCX enums from the kernel's BTF
(``SCX_ENUM_INIT``: ``__SCX_DSQ_LOCAL``, ``__SCX_SLICE_DFL`` … read 0
otherwise), tunables from the machine (``nr_cpu_ids =
libbpf_num_possible_cpus()``) and array sizes (``RESIZE_ARRAY``).  aios never
runs that loader (it loads with bpftool in the guest, libbpf on a host), so
this module *plans* the same initialization from the loader's source and the
target's report, and applies it two ways:

* guest path: ``apply_to_elf`` patches ``.rodata`` and grows the sections
  in the object file, then ``bpftool struct_ops register`` loads it;
* host path: ``LoadPlan.rodata_image`` and ``resizes`` feed libbpf's
  ``bpf_map__set_initial_value`` / ``bpf_map__set_value_size`` (libbpf.py).

Only statements before ``SCX_OPS_LOAD`` and outside the option-parsing
``getopt`` loop count (those are the defaults).  An assignment whose value
cannot be known here (``getpid()``, a file read, a loop filling an array) is
a *problem*: the verdict says which and why, and ``overrides`` (``--set
NAME=VALUE``) can supply it.

Public API::

    Target(kernel, nr_cpus, enums)            # what the loading machine reports
    guest_target(setup, nr_cpus) / host_target(btf="/sys/kernel/btf/vmlinux")
    plan_load(source, obj, target, overrides=None) -> LoadPlan
    apply_to_elf(obj, plan) -> bytes
"""

from __future__ import annotations

import ast
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .btf import Enumerator, kernel_enums
from .checks import strip_comments
from .elf import ElfObject


@dataclass(frozen=True)
class Target:
    """The machine an object will be loaded on: its kernel's enums and its possible CPUs."""

    kernel: str
    nr_cpus: int
    enums: dict[str, Enumerator]


def guest_target(setup, nr_cpus: int) -> Target:
    """The micro-VM: the cached guest kernel's BTF and the CPU count the VM is booted with."""
    if setup.vmlinux is None or not Path(setup.vmlinux).is_file():
        raise FileNotFoundError("no vmlinux in the sched_ext cache: run `aios sched setup`")
    kdir = Path(setup.vmlinux).parent
    return Target(setup.kernel_release, nr_cpus, kernel_enums(setup.vmlinux, kdir))


def _possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """What ``libbpf_num_possible_cpus()`` returns: the highest possible CPU + 1 (``0-3`` → 4)."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def host_target(btf: Path | str = "/sys/kernel/btf/vmlinux") -> Target:
    """This machine: its running kernel's BTF and its possible CPUs (as libbpf counts them)."""
    return Target(os.uname().release, _possible_cpus(), kernel_enums(btf))


@dataclass
class LoadPlan:
    """What to set before load: ``.rodata`` values, section sizes, and what could not be inferred."""

    values: dict[str, int] = field(default_factory=dict)       # rodata symbol -> value
    why: dict[str, str] = field(default_factory=dict)          # rodata symbol -> where the value came from
    resizes: dict[str, int] = field(default_factory=dict)      # section (".data.cpu_started_at") -> bytes
    problems: list[str] = field(default_factory=list)          # one line each: what blocks a faithful load
    loader: str = ""                                           # the upstream loader read, if any
    target: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def facts(self) -> dict:
        enums = sorted(k for k, w in self.why.items() if w.startswith("BTF enum"))
        return {"target": self.target, "loader": self.loader, "enums_set": len(enums),
                "tunables": {k: v for k, v in self.values.items() if not self.why.get(k, "").startswith("BTF enum")},
                "resized": dict(self.resizes), "problems": list(self.problems)}

    def rodata_image(self, obj: bytes) -> bytes:
        """The ``.rodata`` contents with the plan applied (for ``bpf_map__set_initial_value``)."""
        return ElfObject(apply_to_elf(obj, self)).section_data(".rodata")


# ---------------------------------------------------------------------- the loader's source


def companion_loader(source: Path) -> Path | None:
    """``scx_x.bpf.c`` → ``scx_x.c`` next to it, when it is an upstream-style loader (``SCX_OPS_LOAD``)."""
    cand = source.with_name(source.name.removesuffix(".bpf.c") + ".c")
    if cand != source and cand.is_file() and "SCX_OPS_LOAD" in cand.read_text(errors="replace"):
        return cand
    return None


def _balanced(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index just after the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _pre_load_text(loader_text: str) -> str:
    """The loader's code from ``SCX_OPS_OPEN`` to ``SCX_OPS_LOAD``, without its option-parsing loop."""
    text = strip_comments(loader_text)
    start = text.find("SCX_OPS_OPEN")
    end = text.find("SCX_OPS_LOAD", max(start, 0))
    text = text[max(start, 0):end if end >= 0 else len(text)]
    m = re.search(r"while\s*\(\s*\(\s*\w+\s*=\s*getopt", text)
    if m:
        paren_end = _balanced(text, text.index("(", m.start()), "(", ")")
        brace = text.find("{", paren_end)
        if brace >= 0:
            text = text[:m.start()] + text[_balanced(text, brace, "{", "}"):]
    return text


_CAST = re.compile(r"\(\s*(?:const\s+)?(?:unsigned\s+|signed\s+)?(?:__)?(?:[us](?:8|16|32|64)|int|long|bool|"
                   r"u?int(?:8|16|32|64)_t|size_t)\s*\)")
_INT = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b")


class _Unknown(Exception):
    pass


def _evaluate(expr: str, target: Target, assigned: dict[str, int], defaults: dict[str, int]) -> int:
    """Value of a loader expression built from literals, the CPU count, enums and earlier assignments."""
    e = _CAST.sub("", expr.strip())
    e = re.sub(r"\blibbpf_num_possible_cpus\s*\(\s*\)", str(target.nr_cpus), e)

    def enum_or_zero(m: re.Match) -> str:
        got = target.enums.get(m.group(2))
        return str(got.value if got is not None and got.enum == m.group(1) else 0)

    e = re.sub(r"__COMPAT_ENUM_OR_ZERO\s*\(\s*\"(\w+)\"\s*,\s*\"(\w+)\"\s*\)", enum_or_zero, e)

    def earlier(m: re.Match) -> str:
        name = m.group(1)
        if name in assigned:
            return str(assigned[name])
        if name in defaults:
            return str(defaults[name])
        raise _Unknown
    e = re.sub(r"skel->rodata->(\w+)", earlier, e)
    e = re.sub(r"\btrue\b", "1", re.sub(r"\bfalse\b", "0", e))
    e = _INT.sub(lambda m: str(int(m.group(1), 0)), e)
    try:
        tree = ast.parse(e, mode="eval")
    except SyntaxError as exc:
        raise _Unknown from exc
    return _ast_int(tree.body)


def _ast_int(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert)):
        v = _ast_int(node.operand)
        return -v if isinstance(node.op, ast.USub) else (~v if isinstance(node.op, ast.Invert) else v)
    if isinstance(node, ast.BinOp):
        a, b = _ast_int(node.left), _ast_int(node.right)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.Div: lambda: a // b if b else 0, ast.FloorDiv: lambda: a // b if b else 0,
               ast.Mod: lambda: a % b if b else 0, ast.BitOr: lambda: a | b, ast.BitAnd: lambda: a & b,
               ast.LShift: lambda: a << b, ast.RShift: lambda: a >> b}
        f = ops.get(type(node.op))
        if f is not None:
            return f()
    raise _Unknown


#: Pre-load statements aios cannot replay (pattern, what it means).
_UNREPLAYABLE = [
    (re.compile(r"skel->rodata_\w+->(\w+)"), "fills the read-only array {0} element by element"),
    (re.compile(r"bpf_map__set_(?:max_entries|value_size|key_size)\s*\(\s*skel->maps\.(\w+)"),
     "resizes map {0} at run time"),
    (re.compile(r"skel->(?:bss|data)->(\w+)\s*(?:\[[^\]]*\])?\s*[|&+\-]?=(?!=)"), "writes {0} before load"),
    (re.compile(r"skel->struct_ops\.\w+->(\w+)\s*[|&]?=(?!=)"), "sets ops field {0} before load"),
]


def _rodata_defaults(elf: ElfObject) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in elf.symbols:
        if s.section == ".rodata" and s.type == 1 and s.size in (1, 2, 4, 8):
            out[s.name] = int.from_bytes(elf.symbol_bytes(s), "little")
    return out


def plan_load(source: Path | str, obj: bytes, target: Target, overrides: dict[str, int] | None = None) -> LoadPlan:
    """Work out what the upstream loader would set before load, for ``target``.

    SCX enum globals (``__SCX_*`` in ``.rodata``) are set from the target's BTF
    whether or not there is a loader (their names say which enumerator); an
    enumerator the target kernel lacks stays 0, as ``__COMPAT_ENUM_OR_ZERO``
    would leave it.  ``overrides`` (name → value) win over everything.
    """
    source = Path(source)
    elf = ElfObject(obj)
    overrides = dict(overrides or {})
    plan = LoadPlan(target=f"{target.kernel}, {target.nr_cpus} CPUs")
    defaults = _rodata_defaults(elf)
    for name in defaults:
        if name.startswith("__SCX_") or name.startswith("__scx_"):
            got = target.enums.get(name[2:])
            if got is not None:
                plan.values[name] = got.value
                plan.why[name] = f"BTF enum {got.enum}.{name[2:]}"
    loader = companion_loader(source)
    if loader is not None:
        plan.loader = loader.name
        _plan_from_loader(plan, loader.read_text(errors="replace"), elf, target, defaults, overrides)
    for name, value in overrides.items():
        if name not in defaults:
            plan.problems.append(f"--set {name}: the object has no read-only global {name!r}")
            continue
        plan.values[name] = int(value)
        plan.why[name] = "--set"
    return plan


def _plan_from_loader(plan: LoadPlan, loader_text: str, elf: ElfObject, target: Target,
                      defaults: dict[str, int], overrides: dict[str, int]) -> None:
    text = _pre_load_text(loader_text)
    assigned: dict[str, int] = {}
    for m in re.finditer(r"skel->rodata->(\w+)\s*=(?!=)\s*([^;]+);|RESIZE_ARRAY\s*\(\s*\w+\s*,\s*(\w+)\s*,\s*(\w+)"
                         r"\s*,\s*([^;]+)\)\s*;", text):
        if m.group(1):
            name, expr = m.group(1), m.group(2).strip()
            if name in overrides:
                continue
            try:
                assigned[name] = _evaluate(expr, target, assigned, defaults)
            except _Unknown:
                if re.search(r"\bgetpid\b|\bgettid\b", expr):
                    plan.problems.append(f"{plan.loader} sets {name} = `{expr}`: the scheduler needs its user-space "
                                         "part running (aios loads only the BPF side), refused")
                else:
                    plan.problems.append(f"{plan.loader} sets {name} = `{expr}` before load, which aios cannot "
                                         f"infer (pass --set {name}=VALUE)")
                continue
            if name in defaults:
                plan.values[name] = assigned[name]
                plan.why[name] = f"{plan.loader}: {expr}"
        else:
            sec, arr, expr = f".{m.group(3)}.{m.group(4)}", m.group(4), m.group(5).strip()
            section = elf.section(sec)
            sym = elf.symbol(arr, sec)
            if section is None or sym is None or sym.size == 0:
                continue  # optimised out: nothing to size
            try:
                n = _evaluate(expr, target, {**assigned, **overrides}, defaults)
            except _Unknown:
                plan.problems.append(f"{plan.loader} sizes {arr} with `{expr}`, which aios cannot infer")
                continue
            if n < 1 or n > 1 << 16:
                plan.problems.append(f"{plan.loader} sizes {arr} to {n} elements: out of range")
                continue
            plan.resizes[sec] = section.size - sym.size + sym.size * n
    for pat, what in _UNREPLAYABLE:
        for m in pat.finditer(text):
            line = f"{plan.loader} {what.format(m.group(1))}, which aios cannot replay before load"
            if line not in plan.problems:
                plan.problems.append(line)


def apply_to_elf(obj: bytes, plan: LoadPlan) -> bytes:
    """The object with ``plan`` applied: sections grown, ``.rodata`` values written (the guest path)."""
    elf = ElfObject(obj)
    for sec, size in plan.resizes.items():
        elf.resize_section(sec, size)
    for name, value in plan.values.items():
        sym = elf.symbol(name, ".rodata")
        if sym is None or sym.size not in (1, 2, 4, 8):
            continue
        raw = value & ((1 << (8 * sym.size)) - 1)
        elf.patch(sym, 0, struct.pack({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[sym.size], raw))
    return elf.to_bytes()
