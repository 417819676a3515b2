"""Enum values from a kernel's BTF, read directly from the binary format (no bpftool, no libbpf).

Why: upstream sched_ext objects keep the SCX enums (``SCX_DSQ_LOCAL``,
``SCX_SLICE_DFL``, …) in read-only globals that the loader fills from the
*target* kernel's BTF before load (``SCX_ENUM_INIT``).  The same reader serves
the guest path (the ``.BTF`` section of the cached ``vmlinux``) and the host
path (``/sys/kernel/btf/vmlinux``), so both initialize objects identically.
Only the type section is walked, enums are kept; everything else is skipped
by its documented size.

Public API::

    read_btf(path) -> bytes                  # raw BTF: a /sys/kernel/btf file or the .BTF section of an ELF
    enum_values(raw) -> dict[str, Enumerator]
    kernel_enums(path) -> dict[str, Enumerator]   # cached per file (path, size, mtime)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F

#: Bytes that follow the 12-byte common header, per BTF kind (times vlen where noted).
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
KIND_ENUM, KIND_ENUM64 = 6, 19


@dataclass(frozen=True)
class Enumerator:
    """One enum constant: its enum's name and its value (as the kernel sees it, signed when the enum is)."""

    enum: str
    value: int


class BtfError(ValueError):
    pass


def read_btf(path: Path | str) -> bytes:
    """Raw BTF bytes of ``path``: a raw BTF file (``/sys/kernel/btf/vmlinux``) or an ELF with ``.BTF``."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        return data
    if data[4] != 2 or data[5] != 1:
        raise BtfError(f"{path}: only little-endian ELF64 is supported")
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx][4]
    for name, _typ, _flags, _addr, off, size in heads:
        end = data.index(b"\0", strtab + name)
        if data[strtab + name:end] == b".BTF":
            return data[off:off + size]
    raise BtfError(f"{path}: no .BTF section")


def enum_values(raw: bytes) -> dict[str, Enumerator]:
    """Every enumerator (``ENUM`` and ``ENUM64``) in the BTF, by name."""
    if len(raw) < 24:
        raise BtfError("BTF too short")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", raw, 0)
    if magic != BTF_MAGIC:
        raise BtfError(f"bad BTF magic {magic:#x}")
    type_off, type_len, str_off, _str_len = struct.unpack_from("<IIII", raw, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off

    def name_at(off: int) -> str:
        start = strings + off
        return raw[start:raw.index(b"\0", start)].decode(errors="replace")

    out: dict[str, Enumerator] = {}
    pos, end = types, types + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", raw, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        if kind == KIND_ENUM:
            ename = name_at(name_off)
            for i in range(vlen):
                n_off, val = struct.unpack_from("<Ii" if kflag else "<II", raw, pos + 8 * i)
                out[name_at(n_off)] = Enumerator(ename, val)
        elif kind == KIND_ENUM64:
            ename = name_at(name_off)
            for i in range(vlen):
                n_off, lo, hi = struct.unpack_from("<III", raw, pos + 12 * i)
                val = (hi << 32) | lo
                if kflag and val >= 1 << 63:
                    val -= 1 << 64
                out[name_at(n_off)] = Enumerator(ename, val)
        if kind in _PER_MEMBER:
            pos += _PER_MEMBER[kind] * vlen
        else:
            pos += _FIXED.get(kind, 0)
    return out


def kernel_enums(path: Path | str, cache_dir: Path | None = None) -> dict[str, Enumerator]:
    """``enum_values`` of a kernel's BTF, cached as JSON in ``cache_dir`` (keyed by size and mtime)."""
    path = Path(path)
    st = path.stat()
    cache = cache_dir / f"enums-{path.name}-{st.st_size}-{int(st.st_mtime)}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            return {k: Enumerator(e, v) for k, (e, v) in json.loads(cache.read_text()).items()}
        except (ValueError, TypeError):
            pass
    values = enum_values(read_btf(path))
    if cache is not None:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: [e.enum, e.value] for k, e in values.items()}))
        tmp.replace(cache)
    return values
