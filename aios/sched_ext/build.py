"""Compile sched_ext BPF C with clang and return structured diagnostics.

Why: the sched-agent (an LLM) writes scheduler source; it needs compiler
errors it can act on (file, line, column, severity, message), not a wall of
text.  The object is built against the guest kernel's ``vmlinux.h`` and the
BTF-derived kfunc prototypes from ``setup.py``, plus ``include/aios_scx.h``.

Also here: a minimal ELF64 reader/patcher for BPF objects, so the verifier
can shorten the sched_ext watchdog (``timeout_ms`` in the struct_ops map) and
the loader can set ``AIOS_TUNABLE`` values in ``.rodata`` without rebuilding.

Public API::

    compile_bpf(source, out=None, setup=None, defines=None, extra_flags=()) -> BuildResult
    parse_diagnostics(stderr_text) -> list[Diagnostic]
    clang_command(source, out, setup=None, defines=None) -> list[str]
    INCLUDE_DIR                                   # directory holding aios_scx.h
    ElfObject(path_or_bytes): .sections, .symbols, .section_data(name),
                              .symbol_bytes(sym), .patch_symbol(...), .to_bytes()
    patch_struct_ops_field(obj_bytes, field, value, setup=None) -> bytes
    set_tunables(obj_bytes, {"name": value}) -> bytes
"""

from __future__ import annotations

import functools
import os
import re
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from . import compile_cache
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


# ---------------------------------------------------------------------- ELF objects


@dataclass
class ElfSection:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


@dataclass
class ElfSymbol:
    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int
    section: str
    entry_offset: int = -1   # file offset of its symtab entry (resize_section updates st_size there)


SHT_SYMTAB, SHT_NOBITS, SHT_REL = 2, 8, 9


class ElfObject:
    """A little-endian ELF64 relocatable (what clang -target bpf writes), readable and patchable.

    Deliberately tiny: enough to find sections, symbols and relocations and
    to overwrite bytes in place (sizes never change, so the file stays valid).
    """

    def __init__(self, data: bytes | Path | str) -> None:
        self.data = bytearray(Path(data).read_bytes() if isinstance(data, (str, Path)) else data)
        if self.data[:4] != b"\x7fELF" or self.data[4] != 2 or self.data[5] != 1:
            raise ValueError("not a little-endian ELF64 object")
        (self.e_machine,) = struct.unpack_from("<H", self.data, 18)
        shoff, = struct.unpack_from("<Q", self.data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 58)
        self._shoff, self._shentsize = shoff, shentsize
        raw = []
        for i in range(shnum):
            raw.append(struct.unpack_from("<IIQQQQIIQQ", self.data, shoff + i * shentsize))
        strtab_off = raw[shstrndx][4]
        self.sections: list[ElfSection] = []
        for i, (name, typ, flags, _addr, off, size, link, info, _align, entsize) in enumerate(raw):
            self.sections.append(ElfSection(i, self._cstr(strtab_off + name), typ, flags, off, size, link, info,
                                            entsize))
        self.symbols: list[ElfSymbol] = []
        for sec in self.sections:
            if sec.type != SHT_SYMTAB:
                continue
            stroff = self.sections[sec.link].offset
            for j in range(sec.size // 24):
                name, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, sec.offset + j * 24)
                secname = self.sections[shndx].name if 0 < shndx < len(self.sections) else ""
                self.symbols.append(ElfSymbol(self._cstr(stroff + name), value, size, info >> 4, info & 0xF,
                                              shndx, secname, sec.offset + j * 24))

    def _cstr(self, off: int) -> str:
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode(errors="replace")

    @property
    def is_bpf(self) -> bool:
        return self.e_machine == 247  # EM_BPF

    def section(self, name: str) -> ElfSection | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, name: str) -> bytes:
        s = self.section(name)
        if s is None or s.type == SHT_NOBITS:
            return b""
        return bytes(self.data[s.offset:s.offset + s.size])

    def symbol(self, name: str, section: str | None = None) -> ElfSymbol | None:
        return next((s for s in self.symbols if s.name == name and (section is None or s.section == section)), None)

    def symbol_bytes(self, sym: ElfSymbol) -> bytes:
        sec = self.sections[sym.shndx]
        if sec.type == SHT_NOBITS:
            return b"\0" * sym.size
        return bytes(self.data[sec.offset + sym.value: sec.offset + sym.value + sym.size])

    def patch(self, sym: ElfSymbol, offset: int, value: bytes) -> None:
        """Overwrite ``value`` at ``offset`` inside symbol ``sym`` (bounds-checked)."""
        sec = self.sections[sym.shndx]
        if sec.type == SHT_NOBITS:
            raise ValueError(f"{sym.name} lives in {sec.name} (no file bytes)")
        if offset < 0 or offset + len(value) > sym.size:
            raise ValueError(f"patch outside {sym.name} ({offset}+{len(value)} > {sym.size})")
        start = sec.offset + sym.value + offset
        self.data[start:start + len(value)] = value

    def relocations(self, section: str) -> list[tuple[int, str]]:
        """(offset, symbol name) of each REL entry that applies to ``section``."""
        target = self.section(section)
        if target is None:
            return []
        out = []
        for sec in self.sections:
            if sec.type != SHT_REL or sec.info != target.index:
                continue
            symtab = self.sections[sec.link]
            stroff = self.sections[symtab.link].offset
            for j in range(sec.size // 16):
                off, info = struct.unpack_from("<QQ", self.data, sec.offset + j * 16)
                symidx = info >> 32
                name_off, = struct.unpack_from("<I", self.data, symtab.offset + symidx * 24)
                out.append((off, self._cstr(stroff + name_off)))
        return out

    def resize_section(self, name: str, new_size: int) -> None:
        """Grow a data section to ``new_size`` bytes, zero-filled, as libbpf's ``bpf_map__set_value_size`` does.

        This is upstream's ``RESIZE_ARRAY`` (a ``RESIZABLE_ARRAY`` lives alone in
        its own ``.data.NAME`` section) for a loader that cannot call libbpf:
        the grown contents are appended at the end of the file and the section
        header points there; the symbol that ends the section grows with it.
        The BTF array type keeps its one element: the kernel accepts a
        variable larger than its type, and the verifier bounds accesses by the
        map's value size.
        """
        sec = self.section(name)
        if sec is None:
            raise KeyError(f"no section {name!r}")
        if new_size < sec.size:
            raise ValueError(f"{name}: cannot shrink {sec.size} -> {new_size} bytes")
        grow = new_size - sec.size
        if grow == 0:
            return
        hdr = self._shoff + sec.index * self._shentsize
        if sec.type != SHT_NOBITS:
            old = bytes(self.data[sec.offset:sec.offset + sec.size])
            self.data += b"\0" * ((-len(self.data)) % 8)
            sec.offset = len(self.data)
            self.data += old + b"\0" * grow
            struct.pack_into("<Q", self.data, hdr + 24, sec.offset)
        struct.pack_into("<Q", self.data, hdr + 32, new_size)
        for sym in self.symbols:
            if sym.shndx == sec.index and sym.value + sym.size == sec.size and sym.entry_offset >= 0:
                sym.size += grow
                struct.pack_into("<Q", self.data, sym.entry_offset + 16, sym.size)
        sec.size = new_size

    def struct_ops_maps(self) -> list[ElfSymbol]:
        """Global variables in ``.struct_ops`` / ``.struct_ops.link`` sections (the scheduler ops)."""
        return [s for s in self.symbols if s.section.startswith(".struct_ops") and s.type == 1 and s.size > 0]

    def to_bytes(self) -> bytes:
        return bytes(self.data)


def struct_member_offsets(setup: SetupInfo | None, struct_name: str) -> dict[str, tuple[int, int]]:
    """Byte offset and size of each member of ``struct_name`` from the target kernel's vmlinux.h.

    Sizes are taken from a small table of scalar types; the fields we patch
    (timeout_ms u32, flags u64, name char[]) are all covered.
    """
    setup = setup or ensure_setup(progress=False)
    return _offsets_from_btf(setup, struct_name)


def _offsets_from_btf(setup: SetupInfo, struct_name: str) -> dict[str, tuple[int, int]]:
    cache = setup.cache_dir / "kernel" / setup.kernel_release / f"offsets-{struct_name}.txt"
    if cache.is_file():
        text = cache.read_text()
    else:
        target = setup.vmlinux if setup.vmlinux and setup.vmlinux.is_file() else None
        if target is None:
            raise RuntimeError("no vmlinux in the cache; run `aios sched setup`")
        proc = subprocess.run(["bpftool", "btf", "dump", "file", str(target)], capture_output=True, text=True)
        text = _extract_struct_block(proc.stdout, struct_name)
        cache.write_text(text)
    out: dict[str, tuple[int, int]] = {}
    for m in re.finditer(r"'(\w+)' type_id=\d+ bits_offset=(\d+)(?: bitfield_size=(\d+))?", text):
        out[m.group(1)] = (int(m.group(2)) // 8, 0)
    names = list(out)
    size_m = re.search(r"size=(\d+)", text)
    total = int(size_m.group(1)) if size_m else 0
    for i, n in enumerate(names):
        nxt = out[names[i + 1]][0] if i + 1 < len(names) else total
        out[n] = (out[n][0], nxt - out[n][0])
    return out


def _extract_struct_block(raw: str, struct_name: str) -> str:
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^\[\d+\] STRUCT '{re.escape(struct_name)}' size=", line):
            block = [line]
            for nxt in lines[i + 1:]:
                if not nxt.startswith("\t"):
                    break
                block.append(nxt)
            return "\n".join(block)
    raise RuntimeError(f"struct {struct_name} not in the kernel BTF")


#: The struct_ops types that define a sched_ext scheduler: the classic CPU-indexed ``sched_ext_ops`` and,
#: from kernel 7.2, ``sched_ext_ops_cid`` (the same scheduler interface indexed by CPU ids:
#: ``SCX_OPS_CID_DEFINE``, used by 7.2's scx_qmap). Both carry ``timeout_ms`` and ``name``.
SCHED_EXT_OPS_TYPES = ("sched_ext_ops", "sched_ext_ops_cid")


def btf_var_types(obj: bytes) -> dict[str, str]:
    """VAR name -> type (``"struct sched_ext_ops"``) in the object's BTF, via host bpftool (no privileges)."""
    with tempfile.NamedTemporaryFile(suffix=".bpf.o") as fh:
        fh.write(obj)
        fh.flush()
        proc = subprocess.run(["bpftool", "btf", "dump", "file", fh.name], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    types: dict[int, tuple[str, str, str]] = {}
    for m in re.finditer(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$", proc.stdout, re.M):
        types[int(m.group(1))] = (m.group(2), m.group(3), m.group(4))
    out = {}
    for kind, name, rest in types.values():
        if kind != "VAR":
            continue
        tm = re.search(r"type_id=(\d+)", rest)
        tid = int(tm.group(1)) if tm else 0
        while tid in types and types[tid][0] in ("CONST", "VOLATILE", "TYPEDEF"):
            nm = re.search(r"type_id=(\d+)", types[tid][2])
            tid = int(nm.group(1)) if nm else 0
        if tid in types:
            out[name] = f"{types[tid][0].lower()} {types[tid][1]}"
    return out


def struct_ops_types(obj: bytes) -> dict[str, str]:
    """Each struct_ops map symbol -> its struct name (``sched_ext_ops`` when the BTF does not say)."""
    var_types = btf_var_types(obj)
    out = {}
    for sym in ElfObject(obj).struct_ops_maps():
        t = var_types.get(sym.name, "struct sched_ext_ops")
        out[sym.name] = t.removeprefix("struct ")
    return out


def _ops_offsets(obj: bytes, setup: SetupInfo | None) -> dict[str, dict[str, tuple[int, int]]]:
    """Member offsets of each struct_ops map's own type (the classic or the cid flavour)."""
    types = struct_ops_types(obj)
    return {sym: struct_member_offsets(setup, t if t in SCHED_EXT_OPS_TYPES else "sched_ext_ops")
            for sym, t in types.items()}


def patch_struct_ops_field(obj: bytes, field: str, value: int, setup: SetupInfo | None = None,
                           only_if_zero: bool = False) -> bytes:
    """Set an integer member (e.g. ``timeout_ms``) of every sched_ext_ops map in the object.

    Used by the verifier to force a short watchdog so a stalling scheduler is
    ejected within seconds instead of the default 30 s.  Each map is patched at
    its own type's offset (``SCHED_EXT_OPS_TYPES``).
    """
    offsets_by_map = _ops_offsets(obj, setup)
    elf = ElfObject(obj)
    for sym in elf.struct_ops_maps():
        offsets = offsets_by_map.get(sym.name, {})
        if field not in offsets:
            raise KeyError(f"{struct_ops_types(obj).get(sym.name)} has no member {field!r} on this kernel")
        off, size = offsets[field]
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}.get(size)
        if fmt is None:
            raise ValueError(f"sched_ext_ops.{field} is not a scalar ({size} bytes)")
        if sym.size < off + size:
            continue
        if only_if_zero and any(elf.symbol_bytes(sym)[off:off + size]):
            continue
        elf.patch(sym, off, struct.pack(fmt, value))
    return elf.to_bytes()


def set_tunables(obj: bytes, values: dict[str, int | float | bool]) -> bytes:
    """Overwrite ``AIOS_TUNABLE`` (const volatile, ``.rodata``) integers in the object.

    Raises ``KeyError`` naming the tunables the object does not declare.
    """
    elf = ElfObject(obj)
    missing = []
    for name, value in values.items():
        sym = elf.symbol(name)
        if sym is None or not sym.section.startswith(".rodata"):
            missing.append(name)
            continue
        fmt = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}.get(sym.size)
        if fmt is None:
            raise ValueError(f"tunable {name} has size {sym.size}; only integers can be set")
        v = int(value)
        if v < 0 or sym.size == 8:
            elf.patch(sym, 0, struct.pack(fmt, v) if v < 0 else v.to_bytes(sym.size, "little"))
        else:
            elf.patch(sym, 0, v.to_bytes(sym.size, "little"))
    if missing:
        raise KeyError(f"not tunables of this object (need AIOS_TUNABLE in .rodata): {', '.join(missing)}")
    return elf.to_bytes()


def read_struct_ops_name(obj: bytes, setup: SetupInfo | None = None) -> dict[str, str]:
    """Map symbol → ``.name`` string of each sched_ext_ops map in the object."""
    offsets_by_map = _ops_offsets(obj, setup)
    elf = ElfObject(obj)
    out = {}
    for sym in elf.struct_ops_maps():
        off, size = offsets_by_map.get(sym.name, {}).get("name", (0, 0))
        raw = elf.symbol_bytes(sym)[off:off + size]
        out[sym.name] = raw.split(b"\0", 1)[0].decode(errors="replace")
    return out
