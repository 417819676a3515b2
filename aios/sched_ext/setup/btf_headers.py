"""BTF → C: ``vmlinux.h`` and the kfunc prototypes of the guest kernel.

Why rendered here: bookworm's bpftool 7.1 does not emit kfunc prototypes,
and exact signatures from the target kernel's BTF are what keeps schedulers
portable across the 6.12 → 7.x renames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .host_tools import run_tool
from .info import SetupError

_BTF_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")


@dataclass
class _BtfType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _parse_btf_raw(text: str) -> dict[int, _BtfType]:
    """Parse ``bpftool btf dump file X`` (raw format) into a type table."""
    types: dict[int, _BtfType] = {}
    cur: _BtfType | None = None
    for line in text.splitlines():
        m = _BTF_LINE.match(line)
        if m:
            attrs = dict(re.findall(r"(\w+)=(\S+)", m.group(4)))
            cur = _BtfType(m.group(2), m.group(3), attrs)
            types[int(m.group(1))] = cur
        elif line.startswith("\t") and cur is not None:
            mm = re.match(r"\t'([^']*)'(.*)", line)
            if mm:
                cur.members.append((mm.group(1), dict(re.findall(r"(\w+)=(\S+)", mm.group(2)))))
    return types


class _Unrenderable(Exception):
    pass


def _c_decl(types: dict[int, _BtfType], tid: int, inner: str) -> str:
    """Render a C declarator for BTF type ``tid`` around ``inner`` (name or expression)."""
    if tid == 0:
        return f"void {inner}".rstrip()
    t = types[tid]
    k = t.kind
    if k in ("INT", "FLOAT", "TYPEDEF"):
        return f"{t.name} {inner}".rstrip()
    if k in ("STRUCT", "UNION", "ENUM", "ENUM64", "FWD"):
        if t.name == "(anon)":
            raise _Unrenderable
        kw = {"STRUCT": "struct", "UNION": "union", "ENUM": "enum", "ENUM64": "enum"}.get(k)
        if k == "FWD":
            kw = "union" if t.attrs.get("fwd_kind") == "union" else "struct"
        return f"{kw} {t.name} {inner}".rstrip()
    sub = int(t.attrs.get("type_id", "0"))
    if k == "PTR":
        target = types.get(sub)
        if target is not None and target.kind == "FUNC_PROTO":
            return _c_proto(types, sub, f"(*{inner})")
        return _c_decl(types, sub, f"*{inner}")
    if k in ("CONST", "VOLATILE", "RESTRICT"):
        q = k.lower()
        base = types.get(sub)
        if base is not None and base.kind == "PTR":
            return _c_decl(types, sub, inner)  # `T * const p`: the qualifier does not matter for a prototype
        return f"{q} {_c_decl(types, sub, inner)}"
    if k == "TYPE_TAG":
        return _c_decl(types, sub, inner)
    raise _Unrenderable


def _c_proto(types: dict[int, _BtfType], proto_id: int, name: str) -> str:
    proto = types[proto_id]
    params = []
    for pname, pattrs in proto.members:
        ptid = int(pattrs.get("type_id", "0"))
        if ptid == 0 and pname in ("", "(anon)"):
            params.append("...")
            continue
        params.append(_c_decl(types, ptid, "" if pname in ("", "(anon)") else pname))
    return _c_decl(types, int(proto.attrs.get("ret_type_id", "0")), f"{name}({', '.join(params) or 'void'})")


def kfunc_prototypes(btf_raw: str) -> tuple[list[str], str]:
    """Return (kfunc names, C header text with their extern declarations).

    bookworm's bpftool 7.1 does not emit kfunc prototypes into vmlinux.h, so
    they are rendered here from the raw BTF dump: exactly the kernel's
    signatures, which is what makes schedulers portable across the 6.12→7.x
    renames and signature changes.  Names that carry a ``___`` flavour in the
    kernel (``scx_bpf_dsq_insert___v2``) get one more ``___aios`` suffix so
    libbpf, which strips the last flavour, resolves the real name.
    """
    types = _parse_btf_raw(btf_raw)
    kfunc_ids = sorted({int(t.attrs["type_id"]) for t in types.values()
                        if t.kind == "DECL_TAG" and t.name == "bpf_kfunc" and t.attrs.get("component_idx") == "-1"})
    names: list[str] = []
    decls: list[str] = []
    for fid in kfunc_ids:
        f = types.get(fid)
        if f is None or f.kind != "FUNC":
            continue
        names.append(f.name)
        sym = f.name + "___aios" if "___" in f.name else f.name
        try:
            decl = _c_proto(types, int(f.attrs["type_id"]), sym)
        except (_Unrenderable, KeyError):
            decls.append(f"/* {f.name}: signature not expressible in C here; not declared */")
            continue
        decls.append(f"#define AIOS_HAVE_{f.name} 1")
        decls.append(f"extern {decl} __ksym __weak;")
        if sym != f.name:
            decls.append(f"#define {f.name} {sym}")
    names.sort()
    return names, "\n".join(decls) + "\n"


def write_headers(vmlinux: Path, kdir: Path, release: str, bpftool: str) -> tuple[Path, Path, list[str]]:
    vmlinux_h = kdir / "vmlinux.h"
    kfuncs_h = kdir / "aios_kfuncs.h"
    c = run_tool([bpftool, "btf", "dump", "file", str(vmlinux), "format", "c"], "bpftool btf dump (format c)").stdout
    if "struct sched_ext_ops {" not in c:
        raise SetupError(f"{vmlinux} BTF has no struct sched_ext_ops: not a sched_ext kernel")
    vmlinux_h.write_text(c)
    raw = run_tool([bpftool, "btf", "dump", "file", str(vmlinux)], "bpftool btf dump (raw)").stdout
    names, decls = kfunc_prototypes(raw)
    kfuncs_h.write_text(
        "/* Generated by aios.sched_ext.setup from the guest kernel's BTF: do not edit. */\n"
        "#pragma once\n"
        f'#define AIOS_KERNEL_RELEASE "{release}"\n' + decls)
    return vmlinux_h, kfuncs_h, names

