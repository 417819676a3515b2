"""Read and patch BPF ELF objects in place, without rebuilding.

Why: the verifier shortens the sched_ext watchdog (``timeout_ms`` in the struct_ops map), the loader
sets ``AIOS_TUNABLE`` values in ``.rodata``, and the checks read BTF variable and struct_ops types;
all of them need an object's sections and symbols, none needs clang. Split out of ``build`` (which
compiles) so each file holds one concept.

Public API::

    ElfObject(path_or_bytes): .sections, .symbols, .section_data(name),
                              .symbol_bytes(sym), .patch_symbol(...), .to_bytes()
    patch_struct_ops_field(obj_bytes, field, value, setup=None) -> bytes
    set_tunables(obj_bytes, {"name": value}) -> bytes
"""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .setup import SetupInfo, ensure_setup


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
