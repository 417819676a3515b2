"""Static checks of scheduler source and object, before anything reaches a kernel.

Why: the kernel verifier proves memory safety but not *intent*.  These checks
refuse, with a message an LLM can act on, what a CPU scheduler has no
business doing (tracing programs, writing user memory, sending signals,
inline asm), what would fail later with a cryptic error (no sched_ext_ops map,
no name, a kfunc the target kernel lacks, a non-GPL license), loops with no
visible bound, and tunables the loader cannot set (not ``const volatile``).

One policy, two audiences (``provenance.py``): a program that is byte-for-byte one of the kernel's
own examples, built with its own headers, is ``upstream`` and gets the findings in
``UPSTREAM_ALLOWANCES`` waived (kept in the report as ``allowed``, with the reason); everything else,
and every model-written program, gets the full policy. Nothing else is waived: an upstream program
must still be a struct_ops scheduler, GPL, call no forbidden helper or kfunc, and bound its loops.

Public API::

    run_checks(source_text, obj_bytes, setup=None, include_dirs=(), provenance=None) -> CheckReport
    check_source(source_text) -> list[Finding]
    check_object(obj_bytes, kfuncs: set[str] | None, source_text="") -> list[Finding]
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from .elf import SCHED_EXT_OPS_TYPES, ElfObject, btf_var_types, read_struct_ops_name
from .provenance import Provenance
from .setup import SetupInfo, ensure_setup

#: Helpers a scheduler must never call (by BPF helper id): they reach outside scheduling.
FORBIDDEN_HELPERS = {
    36: "bpf_probe_write_user", 58: "bpf_override_return", 109: "bpf_send_signal",
    117: "bpf_send_signal_thread", 166: "bpf_sys_bpf", 167: "bpf_btf_find_by_name_kind",
    168: "bpf_sys_close",
}
#: Helpers refused as hygiene rather than safety (finding code, name): the kernel's examples may use them.
DEBUG_HELPERS = {6: "bpf_trace_printk"}
#: Highest helper id known (kernel 7.x ends around 211): anything above is unknown.
MAX_HELPER_ID = 215
#: kfuncs a scheduler must not call even if the kernel has them.
FORBIDDEN_KFUNCS = {"bpf_send_signal_task", "bpf_throw", "bpf_probe_write_user"}
#: Source constructs refused outright (pattern, code, message).
FORBIDDEN_SOURCE = [
    (re.compile(r"\b(asm|__asm__|__asm)\s*(volatile\s*)?\("), "inline-asm", "inline assembly is not allowed"),
    (re.compile(r"SEC\(\s*\"(?!struct_ops|\.struct_ops|license|\.rodata|\.data|\.bss|\.maps)([^\"]*)\""),
     "program-type", "only struct_ops programs (and maps/data sections) are allowed, not SEC(\"{0}\")"),
    (re.compile(r"\bbpf_probe_write_user\b"), "forbidden-helper", "bpf_probe_write_user is not allowed"),
    (re.compile(r"\bbpf_override_return\b"), "forbidden-helper", "bpf_override_return is not allowed"),
    (re.compile(r"\bbpf_send_signal(_thread|_task)?\b"), "forbidden-helper", "sending signals is not allowed"),
    (re.compile(r"\bbpf_sys_(bpf|close)\b"), "forbidden-helper", "bpf syscalls from BPF are not allowed"),
    (re.compile(r"\bbpf_trace_printk\b|\bbpf_printk\b"), "debug-print",
     "bpf_printk/bpf_trace_printk floods the trace pipe; use a counter map or scx_bpf_error"),
]
#: Findings waived for the kernel's own example schedulers (``provenance.py``), and why. These rules
#: protect against what a model writes, not against what a BPF program can do: the kernel verifier
#: still checks every instruction of an upstream program, and the dynamic stage still runs it.
UPSTREAM_ALLOWANCES = {
    "inline-asm": "the kernel verifier checks every instruction it emits (scx_qmap's empty asm ties its BPF "
                  "arena to each program)",
    "debug-print": "it writes to the trace pipe only (on rare events and behind flags in the examples)",
}
#: Headers from the toolchain: ours, the kernel's vmlinux.h, libbpf's bpf/*.h and the kernel's scx/*.h.
_ALLOWED_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](aios_scx\.h|vmlinux\.h|bpf/[\w.]+\.h|scx/[\w.]+\.h)[>"]')
_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')


class Finding(BaseModel):
    """One static-check result."""

    severity: str  # "error" | "warning" | "allowed" (an error waived for an upstream program)
    code: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{self.severity}: {where}{self.message} [{self.code}]"


class CheckReport(BaseModel):
    ok: bool
    findings: list[Finding] = Field(default_factory=list)
    #: "upstream" (the kernel's own example, see provenance.py) or "submitted"
    origin: str = "submitted"
    ops_names: dict[str, str] = Field(default_factory=dict)  # map symbol -> .name
    kfuncs_used: list[str] = Field(default_factory=list)
    helpers_used: list[int] = Field(default_factory=list)
    tunables: list[str] = Field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


# ---------------------------------------------------------------------- source


def strip_comments(src: str) -> str:
    """Remove C comments and string contents but keep line numbers (newlines stay)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])  # keep strings: SEC("...") matters
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _balanced(text: str, start: int) -> tuple[str, int]:
    """Text inside the parenthesis opening at ``start`` and the index after its close."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:j], j + 1
    return text[start + 1:], len(text)


_CONST_BOUND = re.compile(r"(<=?|>=?|!=)\s*(\(?\s*(u?\d+|0x[0-9a-fA-F]+|[A-Z][A-Z0-9_]*|sizeof\b|ARRAY_SIZE\b|"
                          r"\(\s*(int|u32|u64|s32|s64|unsigned)\s*\)\s*\w+))")


def _tunable_names(src: str) -> list[str]:
    return re.findall(r"(?:const\s+volatile|volatile\s+const)\s+[\w\s]+?\b(\w+)\s*(?:\[[^\]]*\])?\s*=", src) + \
        re.findall(r"AIOS_TUNABLE\(\s*[\w\s]+,\s*(\w+)\s*,", src)


def _local_header(name: str, dirs: Sequence[Path]) -> bool:
    """A header the user brought: a relative name (no ``..``) found in the source's or a ``-I`` directory."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return False
    return any((Path(d) / rel).resolve().is_relative_to(Path(d).resolve()) and (Path(d) / rel).is_file()
               for d in dirs)


def check_source(src: str, include_dirs: Sequence[Path | str] = ()) -> list[Finding]:
    """Heuristic source checks: forbidden constructs, includes, unbounded loops, tunables.

    ``include_dirs`` are where the user's own headers may come from (the
    source's directory and ``-I`` directories); any other include is refused,
    so model-written code cannot pull host files into the build.
    """
    text = strip_comments(src)
    dirs = [Path(d) for d in include_dirs]
    findings: list[Finding] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _INCLUDE.match(line)
        if m and not _ALLOWED_INCLUDE.match(line) and not _local_header(m.group(1), dirs):
            findings.append(Finding(severity="error", code="include", line=lineno,
                                    message=f"#include <{m.group(1)}> is not allowed: use \"aios_scx.h\" or "
                                            "<scx/common.bpf.h>, or a header in the source's directory or an "
                                            "-I directory"))
    for pat, code, msg in FORBIDDEN_SOURCE:
        for m in pat.finditer(text):
            sev = "warning" if code == "debug-print" else "error"
            findings.append(Finding(severity=sev, code=code, line=_line_of(text, m.start()),
                                    message=msg.format(*(g or "" for g in m.groups()))))
    tunables = set(_tunable_names(text))
    # Loops: `while (1)`, `for (;;)` are unbounded; other loops need a visible constant bound.
    for m in re.finditer(r"\b(for|while)\s*\(", text):
        inner, _end = _balanced(text, m.end() - 1)
        line = _line_of(text, m.start())
        if m.group(1) == "for":
            parts = inner.split(";")
            cond = parts[1].strip() if len(parts) == 3 else inner
        else:
            cond = inner.strip()
            # `do { } while (x);` shares the keyword; treat the same.
        if cond in ("", "1", "true") or re.fullmatch(r"\(?\s*(1|true)\s*\)?", cond):
            findings.append(Finding(severity="error", code="unbounded-loop", line=line,
                                    message=f"{m.group(1)} loop without an exit condition: use bpf_for(i, 0, N) "
                                            "or a constant bound"))
            continue
        if cond in ("0", "false") or re.fullmatch(r"\(?\s*(0|false)\s*\)?", cond):
            continue  # `do { } while (0)`: runs once
        if _CONST_BOUND.search(cond) or any(re.search(rf"[<>=]=?\s*{re.escape(t)}\b", cond) for t in tunables):
            continue
        if re.search(r"\b(bpf_iter_\w+_next|can_loop)\b", cond):
            continue
        findings.append(Finding(severity="error", code="unbounded-loop", line=line,
                                message=f"{m.group(1)} loop `{cond[:60]}` has no constant bound: compare against a "
                                        "literal, an UPPER_CASE macro or a tunable, or use bpf_for/bpf_repeat"))
    for m in re.finditer(r"^\s*volatile\s+(?!const)[\w\s]+?\b(\w+)\s*=", text, re.M):
        findings.append(Finding(severity="warning", code="tunable", line=_line_of(text, m.start()),
                                message=f"`{m.group(1)}` is volatile but not const: the loader can only set "
                                        "AIOS_TUNABLE/const volatile (.rodata) tunables"))
    if not re.search(r"SEC\(\s*\"license\"\s*\)", text):
        findings.append(Finding(severity="error", code="license",
                                message='no license: add  char _license[] SEC("license") = "GPL";'))
    return findings


# ---------------------------------------------------------------------- object


def _essential(name: str) -> str:
    """libbpf's ksym essential name: strip the last ``___flavour``."""
    m = re.match(r"^(.*[^_])___[^_].*$", name)
    return m.group(1) if m else name


def _calls(elf: ElfObject) -> tuple[set[int], set[str]]:
    """Helper ids and kfunc names called from the program sections."""
    helpers: set[int] = set()
    kfuncs: set[str] = set()
    undefined = {s.name for s in elf.symbols if s.shndx == 0 and s.name}
    for sec in elf.sections:
        if not (sec.flags & 0x4) or sec.size == 0:  # SHF_EXECINSTR
            continue
        relocs = dict(elf.relocations(sec.name))
        for off in range(0, sec.size, 8):
            opcode, regs, _o, imm = struct.unpack_from("<BBhi", elf.data, sec.offset + off)
            if opcode != 0x85:
                continue
            src = regs >> 4
            if off in relocs:
                # clang emits extern (kfunc) calls as relocated pseudo calls; defined targets are subprograms
                if relocs[off] in undefined:
                    kfuncs.add(relocs[off])
            elif src == 0:
                helpers.add(imm)
            elif src == 2:
                kfuncs.add(f"#{imm}")
    return helpers, kfuncs


def check_object(obj: bytes, kfuncs: set[str] | None, source_text: str = "",
                 setup: SetupInfo | None = None) -> tuple[list[Finding], dict]:
    """Checks on the compiled object; returns (findings, facts)."""
    findings: list[Finding] = []
    facts: dict = {"ops_names": {}, "kfuncs_used": [], "helpers_used": [], "tunables": []}
    try:
        elf = ElfObject(obj)
    except ValueError as e:
        return [Finding(severity="error", code="object", message=str(e))], facts
    if not elf.is_bpf:
        return [Finding(severity="error", code="object", message="not a BPF object (e_machine != EM_BPF)")], facts

    maps = elf.struct_ops_maps()
    if not maps:
        findings.append(Finding(severity="error", code="no-ops",
                                message="no struct_ops map: define the scheduler with "
                                        "SCX_OPS_DEFINE(name_ops, .name = \"name\", ...)"))
    else:
        var_types = btf_var_types(obj)
        for sym in maps:
            t = var_types.get(sym.name)
            if t is not None and t.removeprefix("struct ") not in SCHED_EXT_OPS_TYPES:
                findings.append(Finding(severity="error", code="no-ops",
                                        message=f"struct_ops map {sym.name} is a {t}, not struct sched_ext_ops"))
            if sym.section == ".struct_ops":
                findings.append(Finding(severity="warning", code="legacy-struct-ops",
                                        message=f"{sym.name} is in .struct_ops (no link): use SCX_OPS_DEFINE so the "
                                                "scheduler unloads when its link is removed"))
        if len(maps) > 1:
            findings.append(Finding(severity="error", code="many-ops",
                                    message=f"{len(maps)} struct_ops maps ({', '.join(s.name for s in maps)}): "
                                            "one scheduler per object"))
        try:
            names = read_struct_ops_name(obj, setup)
        except (RuntimeError, KeyError) as e:
            names = {}
            missing_type = "not in the kernel BTF" in str(e)   # e.g. sched_ext_ops_cid on a kernel before 7.2
            findings.append(Finding(severity="error" if missing_type else "warning",
                                    code="no-ops" if missing_type else "ops-name",
                                    message=f"the target kernel cannot take this scheduler: {e}" if missing_type
                                    else f"cannot read .name: {e}"))
        facts["ops_names"] = names
        for sym, nm in names.items():
            if not nm:
                findings.append(Finding(severity="error", code="ops-name",
                                        message=f"{sym} has no .name: set .name = \"...\" in SCX_OPS_DEFINE"))
            elif not re.fullmatch(r"[A-Za-z0-9_]+", nm):
                findings.append(Finding(severity="error", code="ops-name",
                                        message=f".name {nm!r} must be [A-Za-z0-9_]+"))
        # Every struct_ops callback must point at a struct_ops program.
        prog_secs = {s.name: s.section for s in elf.symbols if s.type == 2}
        for sym in maps:
            for off, target in elf.relocations(sym.section):
                sec = prog_secs.get(target, "")
                if off >= sym.value and off < sym.value + sym.size and sec and not sec.startswith("struct_ops"):
                    findings.append(Finding(severity="error", code="program-type",
                                            message=f"callback {target} is in section {sec}, expected "
                                                    "struct_ops/ (use BPF_STRUCT_OPS)"))

    for sec in elf.sections:
        if sec.flags & 0x4 and sec.size and not (sec.name.startswith("struct_ops") or sec.name == ".text"):
            findings.append(Finding(severity="error", code="program-type",
                                    message=f"program section {sec.name!r}: only struct_ops programs are allowed"))

    lic = elf.section_data("license").split(b"\0", 1)[0].decode(errors="replace")
    if not lic:
        findings.append(Finding(severity="error", code="license", message="object has no license section"))
    elif lic not in ("GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL",
                     "Dual MPL/GPL"):
        findings.append(Finding(severity="error", code="license",
                                message=f"license {lic!r} is not GPL-compatible: sched_ext kfuncs are GPL-only"))

    helpers, called = _calls(elf)
    facts["helpers_used"] = sorted(helpers)
    for h in sorted(helpers):
        if h in DEBUG_HELPERS:
            findings.append(Finding(severity="error", code="debug-print",
                                    message=f"calls {DEBUG_HELPERS[h]} (helper {h}), not allowed in a scheduler: "
                                            "use a counter map or scx_bpf_error"))
        elif h in FORBIDDEN_HELPERS:
            findings.append(Finding(severity="error", code="forbidden-helper",
                                    message=f"calls {FORBIDDEN_HELPERS[h]} (helper {h}), not allowed in a scheduler"))
        elif h <= 0 or h > MAX_HELPER_ID:
            findings.append(Finding(severity="error", code="unknown-helper", message=f"calls unknown helper id {h}"))
    externs = {s.name for s in elf.symbols if s.shndx == 0 and s.name and s.bind in (1, 2)}
    used = sorted({_essential(n) for n in (called | externs) if not n.startswith("#")})
    facts["kfuncs_used"] = [u for u in used if not u.startswith(("CONFIG_", "LINUX_", "bpf_ksym_exists"))]
    weak = {s.name for s in elf.symbols if s.shndx == 0 and s.bind == 2}
    for name in facts["kfuncs_used"]:
        if name in FORBIDDEN_KFUNCS:
            findings.append(Finding(severity="error", code="forbidden-kfunc", message=f"kfunc {name} is not allowed"))
            continue
        callers = {n for n in called if _essential(n) == name}
        if kfuncs is None or name in kfuncs or not callers:
            continue
        if all(n in weak and n != name for n in callers):
            # upstream's compat wrappers: a weak, flavoured fallback (scx_bpf_dispatch___compat) that libbpf
            # resolves to NULL on kernels without it; its call sits behind bpf_ksym_exists() and is dead code
            findings.append(Finding(severity="warning", code="compat-kfunc",
                                    message=f"compat fallback {', '.join(sorted(callers))}: {name} is not in the "
                                            "target kernel (the guarded call is never taken)"))
        else:
            findings.append(Finding(severity="error", code="unknown-kfunc",
                                    message=f"kfunc {name} does not exist in the target kernel's BTF"))

    declared = _tunable_names(strip_comments(source_text)) if source_text else []
    for name in declared:
        sym = elf.symbol(name)
        if sym is None:
            continue  # optimised out (never read): harmless
        if not sym.section.startswith(".rodata"):
            findings.append(Finding(severity="error", code="tunable",
                                    message=f"tunable {name} is in {sym.section}, not .rodata: declare it "
                                            "AIOS_TUNABLE(type, name, default) (const volatile)"))
        else:
            facts["tunables"].append(name)
    return findings, facts


def run_checks(source_text: str, obj: bytes, setup: SetupInfo | None = None,
               include_dirs: Sequence[Path | str] = (), provenance: Provenance | None = None) -> CheckReport:
    """Source + object checks; ``ok`` when no finding is an error (``include_dirs``: see ``check_source``).

    ``provenance`` (from ``provenance.provenance_of``) selects the rule set: for an ``upstream``
    program the findings named in ``UPSTREAM_ALLOWANCES`` become ``allowed``; otherwise, and when it
    is not given, the full policy applies.
    """
    setup = setup or ensure_setup(progress=False)
    findings = check_source(source_text, include_dirs)
    obj_findings, facts = check_object(obj, set(setup.kfuncs), source_text, setup)
    findings += obj_findings
    origin = provenance.origin if provenance is not None else "submitted"
    if origin == "upstream":
        assert provenance is not None
        findings = [f.model_copy(update={"severity": "allowed",
                                         "message": f"{f.message}; allowed in the kernel's own "
                                                    f"{provenance.program} ({provenance.package}): "
                                                    f"{UPSTREAM_ALLOWANCES[f.code]}"})
                    if f.code in UPSTREAM_ALLOWANCES else f for f in findings]
    ok = not any(f.severity == "error" for f in findings)
    return CheckReport(ok=ok, findings=findings, origin=origin, **facts)


def check_file(source: Path | str, obj: Path | str, setup: SetupInfo | None = None) -> CheckReport:
    return run_checks(Path(source).read_text(), Path(obj).read_bytes(), setup)
