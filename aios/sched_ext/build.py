"""Compile sched_ext BPF C with clang and return structured diagnostics.

Why: the sched-agent (an LLM) writes scheduler source; it needs compiler
errors it can act on (file, line, column, severity, message), not a wall of
text.  The object is built against the guest kernel's ``vmlinux.h`` and the
BTF-derived kfunc prototypes from ``setup.py``, plus ``include/aios_scx.h``.

Reading and patching the objects it builds (watchdog, tunables) is ``elf``.

Public API::

    compile_bpf(source, out=None, setup=None, defines=None, extra_flags=()) -> BuildResult
    parse_diagnostics(stderr_text) -> list[Diagnostic]
    clang_command(source, out, setup=None, defines=None) -> list[str]
    INCLUDE_DIR                                   # directory holding aios_scx.h
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from . import compile_cache
from .elf import ElfObject
from .setup import SetupInfo, ensure_setup

INCLUDE_DIR = Path(__file__).resolve().parent / "include"

#: clang 14 silently drops tagged anonymous members of 7.x vmlinux.h without the ms-extension flags;
#: ``-mcpu=v3`` because upstream's exit record (``UEI_RECORD``) uses 32-bit atomics (the kernel's own
#: tools/sched_ext Makefile builds with it too).
BASE_FLAGS = ["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86", "-fms-extensions",
              "-Wno-microsoft-anon-tag", "-Wno-unknown-attributes", "-Wno-compare-distinct-pointer-types",
              "-Werror=implicit-function-declaration", "-Werror=incompatible-pointer-types"]

_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>fatal error|error|warning|note): "
                   r"(?P<msg>.*)$")


class Diagnostic(BaseModel):
    """One compiler message."""

    file: str
    line: int
    column: int
    severity: str  # "error" | "warning" | "note" | "fatal error"
    message: str
    snippet: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class BuildResult(BaseModel):
    """Outcome of one compile.  ``object_path`` exists only when ``ok``."""

    ok: bool
    source: Path
    object_path: Path | None = None
    diagnostics: list[Diagnostic] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    stderr: str = ""
    duration_s: float = 0.0
    #: every file clang read for this object (the source and each header), from its ``-MD`` output:
    #: what ``provenance.py`` checks before it calls a program the kernel's own
    dependencies: list[Path] = Field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity in ("error", "fatal error")]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def summary(self, limit: int = 10) -> str:
        """The first few errors (or warnings) as ``file:line:col: severity: message`` lines."""
        pick = self.errors or self.warnings
        lines = [str(d) for d in pick[:limit]]
        if not lines and not self.ok:
            lines = self.stderr.strip().splitlines()[-limit:]
        return "\n".join(lines)


def parse_diagnostics(text: str) -> list[Diagnostic]:
    """Parse clang's ``file:line:col: severity: message`` output (with the source line that follows)."""
    out: list[Diagnostic] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _DIAG.match(line)
        if not m:
            continue
        snippet = lines[i + 1].rstrip() if i + 1 < len(lines) and not _DIAG.match(lines[i + 1]) else ""
        out.append(Diagnostic(file=m["file"], line=int(m["line"]), column=int(m["col"]), severity=m["sev"],
                              message=m["msg"].strip(), snippet=snippet))
    return out


def include_path(setup: SetupInfo, user_dirs: Sequence[Path | str] = ()) -> list[Path]:
    """The ``-I`` directories, in order.

    The kernel directory comes first so its ``vmlinux.h`` wins; then the user's
    own directories (``aios sched verify -I DIR``); then libbpf's headers,
    ``aios_scx.h``, and the kernel's ``tools/sched_ext/include`` (``scx/*.h``,
    and ``bpf-compat`` as upstream's Makefile adds it) when set-up fetched it.
    """
    dirs = [Path(setup.include_dirs[0]), *(Path(d).resolve() for d in user_dirs), *map(Path, setup.include_dirs[1:]),
            INCLUDE_DIR]
    if setup.scx_include is not None:
        dirs += [setup.scx_include, setup.scx_include / "bpf-compat"]
    return dirs


def clang_command(source: Path, out: Path, setup: SetupInfo | None = None,
                  defines: dict[str, str | int] | None = None, extra_flags: tuple[str, ...] = (),
                  include_dirs: Sequence[Path | str] = ()) -> list[str]:
    """The clang command line used for ``source`` (see ``include_path`` for the order of ``-I``)."""
    setup = setup or ensure_setup(progress=False)
    incs: list[str] = []
    for d in include_path(setup, include_dirs):
        incs += ["-I", str(d)]
    defs = [f"-D{k}={v}" for k, v in (defines or {}).items()]
    return [setup.clang, *BASE_FLAGS, *incs, *defs, *extra_flags, "-c", str(source), "-o", str(out)]


def compile_bpf(source: Path | str, out: Path | str | None = None, setup: SetupInfo | None = None,
                defines: dict[str, str | int] | None = None, extra_flags: tuple[str, ...] = (),
                timeout_s: float = 120.0, include_dirs: Sequence[Path | str] = ()) -> BuildResult:
    """Compile one ``*.bpf.c`` into a BPF object.

    ``out`` defaults to a fresh temporary file (the caller owns it).  Never
    raises for compiler errors: they come back in ``BuildResult.diagnostics``.
    A translation unit this process compiled before (same preprocessed text and
    flags) takes clang's stored output instead of a second run (``compile_cache``).
    A ``vmlinux.h`` next to the source would shadow the target kernel's and
    is reported as an error, since it silently breaks kernel compatibility.
    """
    source = Path(source).resolve()
    if out is None:
        fd, name = tempfile.mkstemp(prefix=source.name.removesuffix(".bpf.c") + "-", suffix=".bpf.o")
        os.close(fd)
        out = Path(name)
    out = Path(out)
    t0 = time.monotonic()
    if not source.is_file():
        d = Diagnostic(file=str(source), line=0, column=0, severity="error", message="source file not found")
        return BuildResult(ok=False, source=source, diagnostics=[d], duration_s=0.0)
    if (source.parent / "vmlinux.h").exists():
        d = Diagnostic(file=str(source.parent / "vmlinux.h"), line=0, column=0, severity="error",
                       message="a vmlinux.h next to the source shadows the target kernel's; remove it")
        return BuildResult(ok=False, source=source, diagnostics=[d], duration_s=0.0)
    setup = setup or ensure_setup(progress=False)
    refused = refused_directive(source.read_text(errors="replace"))
    if refused:
        d = Diagnostic(file=str(source), line=refused[0], column=1, severity="error", message=refused[1])
        return BuildResult(ok=False, source=source, diagnostics=[d], duration_s=0.0)
    missing = [str(d) for d in include_dirs if not Path(d).is_dir()]
    if missing:
        d = Diagnostic(file=str(source), line=0, column=0, severity="error",
                       message=f"include directory not found: {', '.join(missing)}")
        return BuildResult(ok=False, source=source, diagnostics=[d], duration_s=0.0)
    reserved = {n: RESERVED_ALIAS + n[2:] for n in setup.kfuncs if n.startswith("__")}
    depfile = out.with_name(out.name + ".d")
    cmd = clang_command(source, out, setup, {**reserved, **(defines or {})}, (*extra_flags, "-MD", "-MF", str(depfile)),
                        include_dirs)
    # the same translation unit compiled before in this process: clang's own output, not a new run
    key = compile_cache.key_for(cmd, timeout_s)
    hit = compile_cache.MEMO.get(key) if key else None
    if hit is not None:
        out.write_bytes(hit.obj)
        depfile.write_text(hit.depfile)
        proc = subprocess.CompletedProcess(cmd, 0, "", hit.stderr)
    else:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            d = Diagnostic(file=str(source), line=0, column=0, severity="error",
                           message=f"clang timed out after {timeout_s:.0f}s")
            return BuildResult(ok=False, source=source, diagnostics=[d], command=cmd, duration_s=timeout_s)
        if key and proc.returncode == 0 and out.is_file() and out.stat().st_size > 0:
            dep_text = depfile.read_text(errors="replace") if depfile.is_file() else ""
            compile_cache.MEMO.put(key, compile_cache.Compiled(out.read_bytes(), proc.stderr, dep_text))
    diags = [_explain_missing_header(d, setup) for d in parse_diagnostics(proc.stderr)]
    ok = proc.returncode == 0 and out.is_file() and out.stat().st_size > 0
    if ok and reserved:
        out.write_bytes(restore_reserved_names(out.read_bytes(), reserved))
    if not ok and not any(d.severity in ("error", "fatal error") for d in diags):
        diags.append(Diagnostic(file=str(source), line=0, column=0, severity="error",
                                message=(proc.stderr.strip().splitlines() or ["clang failed"])[-1]))
    deps = parse_depfile(depfile.read_text(errors="replace")) if ok and depfile.is_file() else []
    depfile.unlink(missing_ok=True)
    return BuildResult(ok=ok, source=source, object_path=out if ok else None, diagnostics=diags,
                       command=cmd, stderr=proc.stderr[-20000:], duration_s=round(time.monotonic() - t0, 3),
                       dependencies=deps)


@functools.lru_cache(maxsize=8)
def system_include_dirs(clang: str) -> tuple[Path, ...]:
    """The directories ``clang -target bpf`` searches on its own (its resource headers, /usr/include)."""
    proc = subprocess.run([clang, "-target", "bpf", "-E", "-v", "-x", "c", "/dev/null", "-o", "/dev/null"],
                          capture_output=True, text=True)
    m = re.search(r"#include <\.\.\.> search starts here:\n(.*?)\nEnd of search list", proc.stderr, re.S)
    return tuple(Path(ln.strip()).resolve() for ln in (m.group(1).splitlines() if m else []) if ln.strip())


_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(include_next|include|import|embed)\b[ \t]*(.*)$", re.M)
_PLAIN_OPERAND = re.compile(r'^(<[^<>"]+>|"[^"]+")')


def refused_directive(src: str) -> tuple[int, str] | None:
    """``(line, reason)`` for a directive that would make clang read a file it has no business reading.

    Checked before clang runs, because clang reads an included file before any check sees it, and
    its diagnostics quote what it read ("unknown type name 'root'"): an absolute or ``..`` path, an
    operand built by a macro, ``#embed``, ``#include_next`` and ``#import`` are refused outright.
    Plain relative names still go through the include rule of the static stage.
    """
    for m in _DIRECTIVE.finditer(src.replace("\\\n", " ")):
        line = src.count("\n", 0, m.start()) + 1
        kind, rest = m.group(1), m.group(2).strip()
        if kind != "include":
            return line, f"#{kind} is not allowed in a scheduler (refused before compiling)"
        op = _PLAIN_OPERAND.match(rest)
        if op is None:
            return line, "#include must name a header literally (\"x.h\" or <x.h>), not through a macro " \
                         "(refused before compiling)"
        name = op.group(1)[1:-1]
        if name.startswith("/") or ".." in Path(name).parts:
            return line, f"#include {op.group(1)}: absolute and '..' paths are not allowed (refused before compiling)"
    return None


def parse_depfile(text: str) -> list[Path]:
    """The prerequisites of a make-style dependency file (``clang -MD``), resolved, in order."""
    body = text.replace("\\\n", " ").split(":", 1)[-1] if ":" in text else ""
    names = re.findall(r"(?:\\.|[^\s\\])+", body)
    out: list[Path] = []
    for n in names:
        p = Path(re.sub(r"\\(.)", r"\1", n)).resolve()
        if p not in out:
            out.append(p)
    return out


#: clang 14 emits no BTF for an extern function whose name starts with ``__`` (a reserved identifier),
#: so libbpf cannot resolve e.g. upstream's ``__scx_bpf_dsq_insert_vtime`` ("failed to find BTF for
#: extern"). Such kfuncs are compiled under a same-length alias (``__x`` -> ``Zzx``) and renamed back in
#: the object's symbol and BTF string tables (``restore_reserved_names``).
RESERVED_ALIAS = "Zz"


def restore_reserved_names(obj: bytes, aliases: dict[str, str]) -> bytes:
    """Put the real ``__name`` of each aliased kfunc back into ``.strtab`` and ``.BTF`` (same length, in place)."""
    elf = ElfObject(obj)
    for secname in (".strtab", ".BTF"):
        sec = elf.section(secname)
        if sec is None:
            continue
        blob = bytes(elf.data[sec.offset:sec.offset + sec.size])
        for real, alias in aliases.items():
            blob = blob.replace(b"\0" + alias.encode() + b"\0", b"\0" + real.encode() + b"\0")
        elf.data[sec.offset:sec.offset + sec.size] = blob
    return elf.to_bytes()


def _explain_missing_header(d: Diagnostic, setup: SetupInfo) -> Diagnostic:
    """``'scx/common.bpf.h' file not found`` → say where such headers come from."""
    m = re.match(r"'([^']+)' file not found", d.message)
    if not m:
        return d
    header = m.group(1)
    if header.startswith("scx/") and setup.scx_include is None:
        why = setup.scx_missing or "run `aios sched setup`"
        hint = f"the kernel's sched_ext headers are not in the cache ({why})"
    elif header.startswith("scx/"):
        hint = f"not among the kernel's sched_ext headers ({setup.scx_include}/scx)"
    else:
        hint = "not in the source's directory, the kernel/libbpf/aios headers or any -I directory (add -I DIR)"
    return d.model_copy(update={"message": f"{d.message}: {hint}"})
