"""Typed wrapper over bpftool's ``-j`` JSON output, for the guest and the host.

Why two modes: inside the micro-VM there is no Python, so this module
*generates* the guest shell commands and *parses* what comes back through the
serial port; on the host the same parsers run over a local ``bpftool`` (BTF
dumps of objects, and — only on a kernel with sched_ext, as root — struct_ops
registration).

Public API::

    guest_register(obj_path, link_dir) -> str        # shell command
    guest_unregister_link(link_dir) -> str
    guest_unregister_name(map_name) -> str
    guest_map_show() / guest_prog_show() / guest_struct_ops_list() -> str
    guest_map_dump(map_id) -> str
    parse_register(text) -> RegisterResult
    parse_maps(json_text) -> list[MapInfo]
    parse_progs(json_text) -> list[ProgInfo]
    parse_map_dump(json_text) -> list[dict]           # BTF-formatted values when available
    Bpftool(path="bpftool").maps() / .progs() / .struct_ops() / .map_dump(id) / .btf_dump(file) / .register(...)
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class MapInfo(BaseModel):
    id: int
    type: str
    name: str = ""
    bytes_key: int = 0
    bytes_value: int = 0
    max_entries: int = 0
    frozen: int = 0
    btf_id: int | None = None


class ProgInfo(BaseModel):
    id: int
    type: str
    name: str = ""
    tag: str = ""
    run_time_ns: int = 0
    run_cnt: int = 0
    xlated_bytes: int = Field(default=0, alias="bytes_xlated")
    jited_bytes: int = Field(default=0, alias="bytes_jited")
    map_ids: list[int] = Field(default_factory=list)

    model_config = {"populate_by_name": True}


class RegisterResult(BaseModel):
    """Outcome of ``bpftool struct_ops register``.

    ``verifier_log`` holds libbpf's program-load log when the kernel verifier
    rejected a program; ``error`` the last libbpf/bpftool error line.
    """

    ok: bool
    ops: list[str] = Field(default_factory=list)
    map_ids: list[int] = Field(default_factory=list)
    link_ids: list[int] = Field(default_factory=list)
    error: str = ""
    failed_program: str = ""
    verifier_log: list[str] = Field(default_factory=list)
    raw: str = ""


def _q(s: str | Path) -> str:
    return shlex.quote(str(s))


# ---------------------------------------------------------------------- guest commands


def guest_register(obj_path: str, link_dir: str, debug: bool = False) -> str:
    """Register every struct_ops map of the object and pin its link(s) under ``link_dir``.

    Without the pin the scheduler would be unregistered as soon as bpftool exits.
    """
    dbg = "-d " if debug else ""
    return f"mkdir -p {_q(link_dir)} && bpftool {dbg}struct_ops register {_q(obj_path)} {_q(link_dir)}"


def guest_unregister_link(link_dir: str) -> str:
    """Unload a ``.struct_ops.link`` scheduler: removing the pinned link detaches it."""
    return f"rm -f {_q(link_dir)}/*"


def guest_unregister_name(map_name: str) -> str:
    """Unload a legacy ``.struct_ops`` scheduler by map name."""
    return f"bpftool struct_ops unregister name {_q(map_name)}"


def guest_map_show() -> str:
    return "bpftool -j map show"


def guest_prog_show() -> str:
    return "bpftool -j prog show"


def guest_struct_ops_list() -> str:
    return "bpftool -j struct_ops show"


def guest_map_dump(map_id: int) -> str:
    return f"bpftool -j map dump id {int(map_id)}"


# ---------------------------------------------------------------------- parsers


def _json(text: str) -> Any:
    text = text.strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except ValueError:
        # bpftool may print warnings before the JSON document.
        start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
        if start < 0:
            raise
        return json.loads(text[start:])


def parse_maps(text: str) -> list[MapInfo]:
    data = _json(text)
    return [MapInfo.model_validate(m) for m in (data if isinstance(data, list) else [data])]


def parse_progs(text: str) -> list[ProgInfo]:
    data = _json(text)
    return [ProgInfo.model_validate(p) for p in (data if isinstance(data, list) else [data])]


def parse_map_dump(text: str) -> list[dict]:
    """Entries of ``bpftool -j map dump``; with BTF each has ``key``/``value`` as typed JSON.

    Global-data maps (``.bss``/``.data``) come back as one entry whose
    ``formatted.value`` is ``{".bss": [{"nr_enq": 52}, ...]}``;
    ``datasec_values`` flattens it.
    """
    data = _json(text)
    return data if isinstance(data, list) else [data]


def datasec_values(entries: list[dict]) -> dict[str, Any]:
    """Flatten a global-data map dump into ``{variable: value}``."""
    out: dict[str, Any] = {}
    for e in entries:
        val = e.get("formatted", e).get("value", e.get("value"))
        if isinstance(val, dict) and isinstance(val.get("datasec"), list):
            val = val["datasec"]
        if isinstance(val, dict) and len(val) == 1 and next(iter(val)).startswith("."):
            val = next(iter(val.values()))  # {".bss": [{"nr_enq": 52}, ...]} (bpftool 7.x)
        if isinstance(val, dict) and "vars" in val:
            val = val["vars"]
        if isinstance(val, list):
            for v in val:
                if isinstance(v, dict):
                    for k, x in v.items():
                        out[k] = x
    return out


_REG_OK = re.compile(r"Registered (\S+) (\S+) map id (\d+)(?: link id (\d+))?")


def parse_register(text: str) -> RegisterResult:
    """Parse bpftool struct_ops register output (stdout+stderr, libbpf log included)."""
    res = RegisterResult(ok=False, raw=text[-20000:])
    for m in _REG_OK.finditer(text):
        res.ops.append(m.group(2))
        res.map_ids.append(int(m.group(3)))
        if m.group(4):
            res.link_ids.append(int(m.group(4)))
    lines = text.splitlines()
    errors = [ln.strip() for ln in lines if re.search(r"(^Error:|libbpf: .*(failed|error|invalid|-E))", ln, re.I)]
    res.error = errors[-1] if errors else ""
    m = re.search(r"libbpf: prog '([^']+)': (?:BPF program load failed|failed to load)", text)
    if m:
        res.failed_program = m.group(1)
    # libbpf wraps the verifier log between these markers.
    log = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)\n-- END PROG LOAD LOG --", text, re.S)
    if log:
        res.verifier_log = log.group(1).splitlines()
    res.ok = bool(res.ops) and not re.search(r"^Error:", text, re.M)
    return res


def essential_verifier_lines(log: list[str], limit: int = 14) -> list[str]:
    """The lines of a verifier log that explain a rejection.

    The verifier prints the whole instruction trace; the reason is at the
    end (``R0 invalid mem access 'map_value_or_null'``, ``back-edge``,
    ``unknown func``…) preceded by the instructions leading to it.
    """
    if not log:
        return []
    keys = re.compile(r"invalid|unknown|not allowed|back-edge|infinite loop|unbounded|too large|too many|"
                      r"unreleased|expected|must|cannot|can't|misaligned|out of bounds|R\d+ !read_ok|"
                      r"type=.* expected|calling kernel function|is not a|processed \d+ insns|math between|"
                      r"loop|jump out of range|sleepable|kfunc", re.I)
    tail = [ln for ln in log if ln.strip()]
    reasons = [ln for ln in tail if keys.search(ln)]
    picked: list[str] = []
    # the last few instructions before the failure give the context
    context = tail[-limit // 2:]
    for ln in reasons[-(limit - len(context)):] + context:
        if ln not in picked:
            picked.append(ln)
    return picked[-limit:]


# ---------------------------------------------------------------------- host


class BpftoolError(RuntimeError):
    pass


class Bpftool:
    """Run a local bpftool with ``-j`` and parse the result (host mode)."""

    def __init__(self, path: str | None = None) -> None:
        found = path or shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists()
                                                    else None)
        if not found:
            raise BpftoolError("bpftool not found: sudo apt-get install bpftool")
        self.path = found

    def run(self, *args: str, json_out: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.path, *(["-j"] if json_out else []), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise BpftoolError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def version(self) -> dict:
        return _json(self.run("version").stdout)

    def maps(self) -> list[MapInfo]:
        return parse_maps(self.run("map", "show").stdout)

    def progs(self) -> list[ProgInfo]:
        return parse_progs(self.run("prog", "show").stdout)

    def struct_ops(self) -> list[dict]:
        return parse_map_dump(self.run("struct_ops", "show").stdout)

    def map_dump(self, map_id: int) -> list[dict]:
        return parse_map_dump(self.run("map", "dump", "id", str(int(map_id))).stdout)

    def btf_dump(self, file: Path | str, c_format: bool = False) -> str:
        args = ["btf", "dump", "file", str(file)] + (["format", "c"] if c_format else [])
        return self.run(*args, json_out=False).stdout

    def register(self, obj: Path | str, link_dir: Path | str) -> RegisterResult:
        """Host registration. Callers must have verified the object and checked the host (libbpf.py does)."""
        Path(link_dir).mkdir(parents=True, exist_ok=True)
        proc = self.run("struct_ops", "register", str(obj), str(link_dir), json_out=False, check=False)
        return parse_register(proc.stdout + proc.stderr)
