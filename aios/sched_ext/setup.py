"""Fetch, cache and assemble everything the sched_ext micro-VM needs.

Why this exists: the host kernel has no ``CONFIG_SCHED_CLASS_EXT`` and its
``/dev/kvm`` cannot boot a stock kernel, so every scheduler is verified and
measured inside a qemu micro-VM running a newer Debian kernel.  This module
resolves that kernel (never a hard-coded version), the guest user space
(busybox, bpftool, rt-tests, stress-ng and exactly the shared libraries their
ELF files need) and the build inputs (``vmlinux.h``, kfunc prototypes, libbpf
headers) and caches them, so that a machine that has run it once never needs
the mirror again.

Debian packages from newer suites are only ever *unpacked* (``dpkg -x``) into
the cache through a private apt configuration; nothing is installed on the
host.

Public API::

    info = ensure_setup(cache_dir=None, progress=True, refresh=False) -> SetupInfo
    load_setup(cache_dir=None) -> SetupInfo | None      # no network, no building
    write_cpio(entries, compress=True) -> bytes         # newc archive, used by vm.py
    default_cache_dir() -> Path

``SetupInfo`` is a pydantic model (see its fields); ``SetupError`` is raised
with an actionable message when a host tool or a package is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from aios.cache import cache_root

#: Bump when the layout of the cache or of the initramfs changes: an older
#: manifest is then rebuilt from the cached .deb files (no network needed).
LAYOUT_VERSION = 5

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
#: Suites tried in order for the kernel; the first whose kernel has sched_ext wins.
KERNEL_SUITES = ("sid", "trixie-backports")
#: Guest packages (taken from the kernel's suite, falling back to the others).
GUEST_PACKAGES = ("busybox-static", "bpftool", "rt-tests", "stress-ng")
#: Build-time headers (bpf_helpers.h etc.) from the same suite as the guest bpftool.
HEADER_PACKAGES = ("libbpf-dev",)
#: Guest programs copied into the initramfs (path inside the package -> path in the guest).
GUEST_PROGRAMS = {
    "bpftool": "usr/sbin/bpftool",
    "cyclictest": "usr/bin/cyclictest",
    "hackbench": "usr/bin/hackbench",
    "stress-ng": "usr/bin/stress-ng",
}
REQUIRED_GUEST_PROGRAMS = ("bpftool",)
#: Programs in the base initramfs; the others (about 30 MB unpacked: stress-ng
#: with its libraries) go into ``tools.cpio.gz``, appended only to boots that
#: need them, because unpacking under TCG costs seconds per boot.
BASE_PROGRAMS = ("bpftool", "cyclictest", "hackbench")

RESULT_MARK = "@@AIOS-RESULT"
EXIT_MARK = "@@AIOS-EXIT"
BOOT_MARK = "@@AIOS-BOOTED"

#: Guest path of the per-run job script (delivered by vm.py in an appended cpio).
GUEST_JOB = "/aios/job.sh"


class SetupError(RuntimeError):
    """Raised when the sandbox cannot be prepared; the message says what to do."""


class SetupInfo(BaseModel):
    """What ``ensure_setup`` has cached, with absolute paths.

    ``vmlinux_h`` and ``kfuncs_h`` are the build inputs for schedulers
    (``build.py`` puts their directory on the include path); ``kfuncs`` lists
    every kfunc the guest kernel's BTF tags with ``bpf_kfunc`` (checks.py
    refuses others).  ``extra_initramfs`` is a hook for files that every boot
    should see (vm.py also accepts per-run files, which is usually better).
    """

    layout_version: int = LAYOUT_VERSION
    cache_dir: Path
    kernel_release: str
    kernel_suite: str
    kernel_packages: dict[str, str] = Field(default_factory=dict)
    vmlinuz: Path
    vmlinux: Path | None = None
    kernel_config: Path
    vmlinux_h: Path
    kfuncs_h: Path
    include_dirs: list[Path]
    kfuncs: list[str]
    initramfs: Path
    initramfs_bytes: int
    tools_initramfs: Path | None = None
    tools_initramfs_bytes: int = 0
    #: programs living in ``tools_initramfs`` (MicroVM appends it when a job uses one)
    tools_programs: list[str] = Field(default_factory=lambda: [p for p in GUEST_PROGRAMS if p not in BASE_PROGRAMS])
    guest_packages: dict[str, str] = Field(default_factory=dict)
    guest_programs: list[str] = Field(default_factory=list)
    bpftool_version: str = ""
    qemu: str
    clang: str
    extra_initramfs: list[Path] = Field(default_factory=list)
    setup_seconds: float = 0.0

    def summary(self) -> str:
        """Human-readable report for ``aios sched setup``."""
        lines = [
            f"cache:      {self.cache_dir}",
            f"kernel:     {self.kernel_release} (Debian {self.kernel_suite}; CONFIG_SCHED_CLASS_EXT=y)",
            f"vmlinuz:    {self.vmlinuz}",
            f"vmlinux.h:  {self.vmlinux_h}",
            f"kfuncs:     {len(self.kfuncs)} ({sum(k.startswith('scx_') for k in self.kfuncs)} scx_*)",
            f"initramfs:  {self.initramfs} ({self.initramfs_bytes / 1e6:.1f} MB; "
            f"+ tools {self.tools_initramfs_bytes / 1e6:.1f} MB when a job uses {', '.join(self.tools_programs)})",
            "guest:      " + ", ".join(f"{k} {v}" for k, v in sorted(self.guest_packages.items())),
            f"programs:   {', '.join(self.guest_programs)}",
            f"qemu:       {self.qemu}",
            f"clang:      {self.clang}",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """``$AIOS_CACHE_DIR/sched_ext`` or ``~/.cache/aios/sched_ext``."""
    return cache_root() / "sched_ext"


def _manifest(cache: Path) -> Path:
    return cache / "setup.json"


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise set-up between processes (tests and benchmarks run in parallel)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_setup(cache_dir: Path | str | None = None) -> SetupInfo | None:
    """Return the cached ``SetupInfo`` if it is complete and current, else None.

    Never touches the network; cheap enough to call before every VM boot.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = _manifest(cache)
    if not path.is_file():
        return None
    try:
        info = SetupInfo.model_validate_json(path.read_text())
    except ValueError:
        return None
    if info.layout_version != LAYOUT_VERSION:
        return None
    needed = [info.vmlinuz, info.kernel_config, info.vmlinux_h, info.kfuncs_h, info.initramfs]
    if not all(p.is_file() for p in needed):
        return None
    return info


# --------------------------------------------------------------------------- host tools


def _which(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        raise SetupError(f"`{name}` not found on PATH. Install it: {hint}")
    return path


def host_tools() -> dict[str, str]:
    """Locate the host tools set-up and builds need, or raise ``SetupError``."""
    return {
        "qemu": _which("qemu-system-x86_64", "sudo apt-get install qemu-system-x86"),
        "clang": _which("clang", "sudo apt-get install clang llvm"),
        "bpftool": _which("bpftool", "sudo apt-get install bpftool"),
        "zstd": _which("zstd", "sudo apt-get install zstd"),
        "apt-get": _which("apt-get", "a Debian/Ubuntu host is required for `aios sched setup`"),
        "dpkg-deb": _which("dpkg-deb", "a Debian/Ubuntu host is required for `aios sched setup`"),
    }


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} …\n" + "\n".join(tail))
    return proc


# --------------------------------------------------------------------------- private apt


def _host_mirror() -> str:
    """The Debian mirror the host's apt already uses (fallback deb.debian.org)."""
    env = os.environ.get("AIOS_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    texts: list[str] = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(p.read_text())
    for text in texts:
        for m in re.finditer(r"(https?://\S+/debian)/?(?:\s|$)", text):
            return m.group(1)
    return "http://deb.debian.org/debian"


@dataclass
class _Apt:
    """One private apt configuration for one suite, living under the cache."""

    root: Path
    suite: str
    mirror: str
    updated: bool = False
    _versions: dict[str, str | None] = field(default_factory=dict)
    _depends: dict[str, list[list[str]]] = field(default_factory=dict)

    def opts(self) -> list[str]:
        o = [
            f"-oDir::Etc::SourceList={self.root / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            "-oDir::Etc::Preferences=/dev/null",
            "-oDir::Etc::PreferencesParts=/dev/null",
            f"-oDir::State::Lists={self.root / 'lists'}",
            f"-oDir::State::status={self.root / 'status'}",
            f"-oDir::Cache={self.root / 'cache'}",
            # Hosts (containers) often disable the binary cache; without it every query re-parses sid.
            f"-oDir::Cache::pkgcache={self.root / 'cache' / 'pkgcache.bin'}",
            f"-oDir::Cache::srcpkgcache={self.root / 'cache' / 'srcpkgcache.bin'}",
            "-oAPT::Architecture=amd64",
            "-oAcquire::Languages=none",
            "-oDebug::NoLocking=1",
        ]
        if os.geteuid() == 0:
            o.append("-oAPT::Sandbox::User=root")
        return o

    def update(self) -> None:
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        signed = f"[signed-by={keyring}] " if Path(keyring).exists() else ""
        (self.root / "sources.list").write_text(f"deb {signed}{self.mirror} {self.suite} main\n")
        _run(["apt-get", *self.opts(), "update"], f"apt-get update ({self.suite})")
        self.updated = True

    def ensure_lists(self) -> None:
        if not self.updated:
            self.update()

    def version(self, pkg: str) -> str | None:
        if pkg not in self._versions:
            self._versions[pkg] = self._query_version(pkg)
        return self._versions[pkg]

    def _query_version(self, pkg: str) -> str | None:
        proc = subprocess.run(["apt-cache", *self.opts(), "show", "--no-all-versions", pkg],
                              capture_output=True, text=True)
        m = re.search(r"^Version: (\S+)", proc.stdout, re.M)
        return m.group(1) if proc.returncode == 0 and m else None

    def depends(self, pkg: str) -> list[list[str]]:
        """Depends/Pre-Depends of ``pkg`` as groups of alternatives (virtuals expanded)."""
        if pkg not in self._depends:
            self._depends[pkg] = self._query_depends(pkg)
        return self._depends[pkg]

    def _query_depends(self, pkg: str) -> list[list[str]]:
        proc = subprocess.run(
            ["apt-cache", *self.opts(), "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
             "--no-breaks", "--no-replaces", "--no-enhances", pkg],
            capture_output=True, text=True)
        groups: list[list[str]] = []
        pending_alt = False
        for line in proc.stdout.splitlines():
            m = re.match(r"^  (\|?)(?:Pre)?Depends: (\S+)", line)
            if m:
                name = m.group(2).strip("<>")
                if pending_alt:
                    groups[-1].append(name)
                else:
                    groups.append([name])
                pending_alt = m.group(1) == "|"
            elif line.startswith("    ") and groups:
                groups[-1].append(line.strip())
        return groups

    def download(self, pkgs: Iterable[str], dest: Path) -> dict[str, Path]:
        """Download (or reuse) the .deb of each package into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        out: dict[str, Path] = {}
        missing: list[str] = []
        for p in pkgs:
            v = self.version(p)
            if v is None:
                raise SetupError(f"package {p!r} is not in Debian {self.suite} (mirror {self.mirror})")
            hits = [d for d in dest.glob(f"{p}_*.deb") if d.name.replace("%3a", ":").split("_")[1].split(":")[-1]
                    == v.split(":")[-1]]
            if hits:
                out[p] = hits[0]
            else:
                missing.append(p)
        if missing:
            _run(["apt-get", *self.opts(), "download", *missing], f"apt-get download ({self.suite})", cwd=dest)
            for p in missing:
                hits = sorted(dest.glob(f"{p}_*.deb"), key=lambda d: d.stat().st_mtime)
                if not hits:
                    raise SetupError(f"apt-get download {p} produced no .deb")
                out[p] = hits[-1]
        return out


def _deb_field(deb: Path, fieldname: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), fieldname], "dpkg-deb -f").stdout.strip()


def _extract(deb: Path, stage: Path) -> Path:
    """``dpkg -x`` into ``stage/<deb stem>`` once (idempotent)."""
    target = stage / deb.stem
    if not (target / ".done").exists():
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(target)], f"dpkg-deb -x {deb.name}")
        (target / ".done").touch()
    return target


# --------------------------------------------------------------------------- kernel


@dataclass
class _Kernel:
    suite: str
    release: str
    packages: dict[str, str]
    vmlinuz: Path
    config: Path


def _resolve_kernel(apt: _Apt, debs: Path, stage: Path) -> _Kernel:
    """Follow the cloud-amd64 metapackage to the package(s) with vmlinuz and config."""
    apt.ensure_lists()
    if apt.version(KERNEL_METAPACKAGE) is None:
        raise SetupError(f"{KERNEL_METAPACKAGE} not in {apt.suite}")
    todo = [KERNEL_METAPACKAGE]
    seen: set[str] = set()
    wanted: list[str] = []
    pat = re.compile(r"^linux-(image|binary|base)-\d")
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for group in apt.depends(pkg):
            for name in group:
                if pat.match(name) or (name.startswith("linux-image-") and pkg == KERNEL_METAPACKAGE):
                    if name not in wanted:
                        wanted.append(name)
                    todo.append(name)
    if not wanted:
        raise SetupError(f"cannot resolve the kernel behind {KERNEL_METAPACKAGE} in {apt.suite}")
    got = apt.download(wanted, debs)
    vmlinuz = config = None
    versions: dict[str, str] = {}
    for name, deb in got.items():
        versions[name] = _deb_field(deb, "Version")
        root = _extract(deb, stage)
        for cand in list(root.glob("usr/lib/modules/*/vmlinuz")) + list(root.glob("boot/vmlinuz-*")):
            vmlinuz = cand
        for cand in list(root.glob("usr/lib/modules/*/config")) + list(root.glob("boot/config-*")):
            config = cand
    if vmlinuz is None or config is None:
        raise SetupError(f"kernel packages {sorted(got)} from {apt.suite} hold no vmlinuz/config")
    release = vmlinuz.parent.name if vmlinuz.name == "vmlinuz" else vmlinuz.name.removeprefix("vmlinuz-")
    return _Kernel(apt.suite, release, versions, vmlinuz, config)


def kernel_has_sched_ext(config: Path) -> bool:
    """True when the kernel config enables sched_ext and BTF (both are required)."""
    text = config.read_text(errors="replace")
    return "CONFIG_SCHED_CLASS_EXT=y" in text and "CONFIG_DEBUG_INFO_BTF=y" in text


def extract_vmlinux(vmlinuz: Path, out: Path) -> Path:
    """Decompress the bzImage's zstd (or gzip/xz) payload into an ELF ``vmlinux``.

    Needed for the BTF (vmlinux.h, kfunc list) and for a faster PVH boot.
    """
    data = vmlinuz.read_bytes()
    attempts = [(b"\x28\xb5\x2f\xfd", ["zstd", "-d", "-c", "-q"]), (b"\xfd7zXZ\x00", ["xz", "-d", "-c", "-q"]),
                (b"\x1f\x8b\x08", ["gzip", "-d", "-c", "-q"])]
    for magic, cmd in attempts:
        start = data.find(magic)
        while start >= 0 and shutil.which(cmd[0]):
            proc = subprocess.run(cmd, input=data[start:], capture_output=True)
            # Trailing data after the frame makes the tools exit non-zero; the ELF is complete anyway.
            if proc.stdout[:4] == b"\x7fELF":
                tmp = out.with_suffix(".tmp")
                tmp.write_bytes(proc.stdout)
                tmp.replace(out)
                return out
            start = data.find(magic, start + 1)
    raise SetupError(f"could not find a compressed ELF payload in {vmlinuz}")


# --------------------------------------------------------------------------- BTF → headers

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


def _write_headers(vmlinux: Path, kdir: Path, release: str, bpftool: str) -> tuple[Path, Path, list[str]]:
    vmlinux_h = kdir / "vmlinux.h"
    kfuncs_h = kdir / "aios_kfuncs.h"
    c = _run([bpftool, "btf", "dump", "file", str(vmlinux), "format", "c"], "bpftool btf dump (format c)").stdout
    if "struct sched_ext_ops {" not in c:
        raise SetupError(f"{vmlinux} BTF has no struct sched_ext_ops: not a sched_ext kernel")
    vmlinux_h.write_text(c)
    raw = _run([bpftool, "btf", "dump", "file", str(vmlinux)], "bpftool btf dump (raw)").stdout
    names, decls = kfunc_prototypes(raw)
    kfuncs_h.write_text(
        "/* Generated by aios.sched_ext.setup from the guest kernel's BTF: do not edit. */\n"
        "#pragma once\n"
        f'#define AIOS_KERNEL_RELEASE "{release}"\n' + decls)
    return vmlinux_h, kfuncs_h, names


# --------------------------------------------------------------------------- guest user space


def _elf_needed(path: Path) -> list[str] | None:
    """DT_NEEDED sonames of an ELF file (None when not a dynamic ELF)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                return None
    except OSError:
        return None
    proc = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        proc = subprocess.run(["llvm-readelf", "-d", str(path)], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", proc.stdout)


def _interp(path: Path) -> str | None:
    proc = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True)
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]", proc.stdout)
    return m.group(1) if m else None


_LIBDIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64", "usr/lib", "lib")


def _find_soname(roots: Iterable[Path], soname: str) -> tuple[Path, str] | None:
    for root in roots:
        for d in _LIBDIRS:
            p = root / d / soname
            if p.exists():
                return p, f"{d}/{soname}"
    return None


def _soname_score(pkg: str, soname: str) -> int:
    base = re.sub(r"\.so.*$", "", soname).removeprefix("lib").lower()
    base = re.sub(r"[^a-z0-9]", "", base)
    name = re.sub(r"[^a-z0-9]", "", pkg.removeprefix("lib").lower())
    if base and name.startswith(base):
        return 0
    if base and base[:4] in name:
        return 1
    return 2


@dataclass
class _Guest:
    files: dict[str, Path]          # guest path -> host file
    symlinks: dict[str, str]        # guest path -> target
    versions: dict[str, str]
    programs: list[str]
    tools_files: dict[str, Path] = field(default_factory=dict)   # workload tools: separate cpio
    tools_links: dict[str, str] = field(default_factory=dict)


def _assemble_guest(apts: list[_Apt], debs: Path, stage: Path, progress: bool) -> _Guest:
    """Unpack guest packages and collect programs plus their shared-library closure.

    Dependencies are resolved by what the ELF files need (DT_NEEDED), looking
    in the declared Depends of the package that needs it — recursively — so
    that e.g. stress-ng's libEGL does not drag Mesa and LLVM in.
    """
    files: dict[str, Path] = {}
    symlinks: dict[str, str] = {}
    versions: dict[str, str] = {}
    pkg_roots: dict[str, Path] = {}
    pkg_apt: dict[str, _Apt] = {}

    def fetch(pkg: str) -> Path | None:
        if pkg in pkg_roots:
            return pkg_roots[pkg]
        for apt in apts:
            apt.ensure_lists()
            if apt.version(pkg) is None:
                continue
            deb = apt.download([pkg], debs)[pkg]
            versions[pkg] = _deb_field(deb, "Version")
            pkg_roots[pkg] = _extract(deb, stage)
            pkg_apt[pkg] = apt
            return pkg_roots[pkg]
        return None

    wanted_pkgs = list(GUEST_PACKAGES)
    for pkg in wanted_pkgs:
        if fetch(pkg) is None and pkg in ("busybox-static", "bpftool"):
            raise SetupError(f"guest package {pkg!r} found in none of {[a.suite for a in apts]}")

    busybox = _find_in(pkg_roots.get("busybox-static"), ["usr/bin/busybox", "bin/busybox"])
    if busybox is None:
        raise SetupError("busybox-static holds no busybox binary")
    files["usr/bin/busybox"] = busybox

    programs: list[str] = []
    tools_files: dict[str, Path] = {}
    tools_links: dict[str, str] = {}
    for prog, rel in GUEST_PROGRAMS.items():
        owner = next((p for p, r in pkg_roots.items() if (r / rel).exists()), None)
        if owner is None:
            if prog in REQUIRED_GUEST_PROGRAMS:
                raise SetupError(f"guest program {prog} not found in the unpacked packages")
            continue
        programs.append(prog)
        base = prog in BASE_PROGRAMS
        tgt_files, tgt_links = (files, symlinks) if base else (tools_files, tools_links)
        tgt_files[rel] = pkg_roots[owner] / rel
        _closure(pkg_roots[owner] / rel, owner, tgt_files, tgt_links, pkg_roots, pkg_apt, fetch)
    for k in list(tools_files):
        if k in files:
            del tools_files[k]
    for k in list(tools_links):
        if k in symlinks:
            del tools_links[k]
    return _Guest(files, symlinks, versions, programs, tools_files, tools_links)


def _closure(start: Path, start_owner: str, files: dict[str, Path], symlinks: dict[str, str],
             pkg_roots: dict[str, Path], pkg_apt: dict[str, _Apt], fetch) -> None:
    """Add the dynamic loader and every DT_NEEDED library of ``start`` (transitively)."""
    queue: list[tuple[Path, str]] = [(start, start_owner)]
    resolved: set[str] = set()
    while queue:
        host_file, owner = queue.pop()
        needed = _elf_needed(host_file) or []
        interp = _interp(host_file) if needed else None
        if interp:
            if fetch("libc6") is None:
                raise SetupError("libc6 not found")
            found = _find_soname([pkg_roots["libc6"]], Path(interp).name)
            if found is None:
                raise SetupError(f"dynamic loader {interp} not found in libc6")
            rel_interp = interp.lstrip("/")
            for short, full in (("lib64/", "usr/lib64/"), ("lib/", "usr/lib/")):
                if rel_interp.startswith(short):
                    rel_interp = full + rel_interp[len(short):]
            files[rel_interp] = found[0].resolve()
        for soname in needed:
            if soname in resolved:
                continue
            hit = _find_soname(pkg_roots.values(), soname)
            if hit is None:
                hit = _search_depends(owner, soname, fetch, pkg_apt)
            if hit is None:
                raise SetupError(f"shared library {soname} (needed by {host_file.name}) not found in "
                                 f"the dependencies of {owner}")
            path, rel = hit
            resolved.add(soname)
            real = path.resolve()
            files[str(Path(rel).parent / real.name)] = real
            if real.name != soname:
                symlinks[rel] = real.name
            lib_owner = next((p for p, r in pkg_roots.items() if real.is_relative_to(r.resolve())), owner)
            queue.append((real, lib_owner))


def _find_in(root: Path | None, rels: list[str]) -> Path | None:
    if root is None:
        return None
    for r in rels:
        if (root / r).exists():
            return root / r
    return None


def _search_depends(owner: str, soname: str, fetch, pkg_apt: dict[str, _Apt]) -> tuple[Path, str] | None:
    """Breadth-first through ``owner``'s library dependencies until ``soname`` shows up."""
    apt = pkg_apt.get(owner)
    if apt is None:
        return None
    seen = {owner}
    frontier = [owner]
    depth = 0
    while frontier and depth < 3:
        cands: list[str] = []
        for pkg in frontier:
            a = pkg_apt.get(pkg, apt)
            for group in a.depends(pkg):
                for name in group:
                    if name not in seen and (name.startswith("lib") or name == "zlib1g"):
                        seen.add(name)
                        cands.append(name)
        cands.sort(key=lambda n: _soname_score(n, soname))
        for name in cands:
            root = fetch(name)
            if root is None:
                continue
            hit = _find_soname([root], soname)
            if hit:
                return hit
        frontier = cands
        depth += 1
    return None


INIT_SCRIPT = r"""#!/bin/sh
# aios sched_ext micro-VM /init: mount the pseudo file systems, run the job, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/usr/bin/busybox mount -t proc proc /proc
/usr/bin/busybox mount -t sysfs sys /sys
/usr/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/usr/bin/busybox mount -t tmpfs tmp /tmp
/usr/bin/busybox mount -t bpf bpf /sys/fs/bpf
/usr/bin/busybox mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
/usr/bin/busybox mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
[ -e /usr/bin/mount ] || /usr/bin/busybox --install -s /usr/bin 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
hostname aios-vm
# Results leave through the second serial port when present: kernel messages go to ttyS0 only.
AIOS_OUT=/dev/console
if [ -c /dev/ttyS1 ]; then stty -F /dev/ttyS1 raw -echo 2>/dev/null; AIOS_OUT=/dev/ttyS1; fi
export AIOS_OUT
aios_result() { echo "@@AIOS-RESULT $*" > "$AIOS_OUT"; }
echo "@@AIOS-BOOTED $(uname -r) ncpu=$(nproc)" > "$AIOS_OUT"
job=/aios/job.sh
if [ ! -f "$job" ]; then
  for arg in $(cat /proc/cmdline); do
    case "$arg" in aios.job=*) echo "${arg#aios.job=}" | base64 -d > /tmp/job.sh; job=/tmp/job.sh ;; esac
  done
fi
cd /aios 2>/dev/null || cd /tmp
if [ -f "$job" ]; then
  . /aios/lib.sh 2>/dev/null
  sh "$job" < /dev/null > "$AIOS_OUT" 2>&1
  rc=$?
else
  rc=127
fi
echo "@@AIOS-EXIT $rc" > "$AIOS_OUT"
sync
poweroff -f
"""


def _dirs_for(paths: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for p in paths:
        parts = Path(p).parts[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


def write_cpio(entries: Iterable[tuple[str, int, bytes | str]], compress: bool = True) -> bytes:
    """Build a newc cpio archive; each entry is (path, mode, data or symlink target).

    ``mode`` carries the file type bits (``stat.S_IFDIR|0o755``, ``S_IFREG|0o755``,
    ``S_IFLNK|0o777``).  Written in Python so no ``cpio`` binary is needed and
    the per-run archive vm.py appends costs microseconds.
    """
    buf = io.BytesIO()
    ino = 1000

    def pad(n: int) -> None:
        buf.write(b"\0" * ((4 - n % 4) % 4))

    def emit(name: str, mode: int, data: bytes) -> None:
        nonlocal ino
        ino += 1
        nb = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        buf.write(hdr.encode())
        buf.write(nb)
        pad(110 + len(nb))
        buf.write(data)
        pad(len(data))

    for name, mode, data in entries:
        payload = data.encode() if isinstance(data, str) else data
        emit(name.lstrip("/"), mode, payload if not stat.S_ISDIR(mode) else b"")
    emit("TRAILER!!!", 0, b"")
    raw = buf.getvalue()
    raw += b"\0" * ((512 - len(raw) % 512) % 512)
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def _file_entries(files: dict[str, Path], links: dict[str, str], dirs: Iterable[str] = ()
                  ) -> list[tuple[str, int, bytes | str]]:
    entries: list[tuple[str, int, bytes | str]] = []
    for d in sorted(set(dirs) | set(_dirs_for(list(files) + list(links)))):
        entries.append((d, stat.S_IFDIR | 0o755, b""))
    for gpath, host in sorted(files.items()):
        mode = 0o755 if os.access(host, os.X_OK) or ".so" in host.name else 0o644
        entries.append((gpath, stat.S_IFREG | mode, host.read_bytes()))
    for gpath, target in sorted(links.items()):
        if gpath not in files:
            entries.append((gpath, stat.S_IFLNK | 0o777, target))
    return entries


def _build_tools_initramfs(guest: _Guest, out: Path) -> int:
    data = write_cpio(_file_entries(guest.tools_files, guest.tools_links))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(data)


def _build_initramfs(guest: _Guest, out: Path) -> int:
    base_dirs = ["usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu", "proc",
                 "sys", "dev", "tmp", "run", "etc", "root", "aios", "mnt", "var", "var/tmp"]
    entries = _file_entries(guest.files, guest.symlinks, base_dirs)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        entries.append((link, stat.S_IFLNK | 0o777, target))
    entries.append(("usr/bin/sh", stat.S_IFLNK | 0o777, "busybox"))
    # Applet links made here save ~0.3 s of `busybox --install` per TCG boot.
    have = set(guest.files) | set(guest.symlinks) | {"usr/bin/sh"}
    proc = subprocess.run([str(guest.files["usr/bin/busybox"]), "--list"], capture_output=True, text=True)
    for applet in sorted(set(proc.stdout.split())):
        gpath = f"usr/bin/{applet}"
        if applet and "/" not in applet and gpath not in have and f"usr/sbin/{applet}" not in have:
            entries.append((gpath, stat.S_IFLNK | 0o777, "busybox"))
    entries.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.replace("#!/bin/sh", "#!/usr/bin/busybox sh", 1)))
    entries.append(("etc/passwd", stat.S_IFREG | 0o644, "root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(("etc/group", stat.S_IFREG | 0o644, "root:x:0:\n"))
    data = write_cpio(entries)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(data)


def _bpftool_version(guest: _Guest) -> str:
    return guest.versions.get("bpftool", "")


# --------------------------------------------------------------------------- main entry


def ensure_setup(cache_dir: Path | str | None = None, progress: bool = True, refresh: bool = False) -> SetupInfo:
    """Make sure the kernel, guest initramfs and build headers are cached; return what is there.

    Idempotent and cheap when already done (reads ``setup.json``).  The first
    run needs the Debian mirror (about 40 MB of downloads); ``refresh=True``
    re-resolves the current sid kernel even when a cache exists.  Raises
    ``SetupError`` with an install hint when qemu, clang, bpftool, zstd or a
    package is missing.  Safe to call from several processes at once.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not refresh:
        info = load_setup(cache)
        if info is not None:
            return info
    tools = host_tools()
    t0 = time.monotonic()
    with _locked(cache):
        if not refresh:
            info = load_setup(cache)
            if info is not None:
                return info
        return _do_setup(cache, tools, progress, t0)


def _do_setup(cache: Path, tools: dict[str, str], progress: bool, t0: float) -> SetupInfo:
    from tqdm import tqdm

    steps = ["apt lists", "kernel", "vmlinux + BTF headers", "guest packages", "libbpf headers", "initramfs"]
    bar = tqdm(total=len(steps), desc="aios sched setup", unit="step", disable=not progress)
    mirror = _host_mirror()
    debs = cache / "debs"
    stage = cache / "stage"
    apts = {s: _Apt(cache / "apt" / s, s, mirror) for s in KERNEL_SUITES}

    bar.set_postfix_str(steps[0])
    errors: list[str] = []
    for s in KERNEL_SUITES:
        try:
            apts[s].update()
        except SetupError as e:
            errors.append(str(e))
    if not any(a.updated for a in apts.values()):
        raise SetupError("cannot reach the Debian mirror for any of "
                         f"{KERNEL_SUITES} ({mirror}); set AIOS_DEBIAN_MIRROR?\n" + "\n".join(errors))
    bar.update(1)

    bar.set_postfix_str(steps[1])
    kernel: _Kernel | None = None
    for s in KERNEL_SUITES:
        if not apts[s].updated:
            continue
        try:
            k = _resolve_kernel(apts[s], debs, stage)
        except SetupError as e:
            errors.append(f"{s}: {e}")
            continue
        if kernel_has_sched_ext(k.config):
            kernel = k
            break
        errors.append(f"{s}: kernel {k.release} lacks CONFIG_SCHED_CLASS_EXT=y or BTF")
    if kernel is None:
        raise SetupError("no Debian cloud kernel with sched_ext found:\n" + "\n".join(errors))
    bar.update(1)

    bar.set_postfix_str(steps[2])
    kdir = cache / "kernel" / kernel.release
    kdir.mkdir(parents=True, exist_ok=True)
    vmlinuz = kdir / "vmlinuz"
    shutil.copyfile(kernel.vmlinuz, vmlinuz)
    config = kdir / "config"
    shutil.copyfile(kernel.config, config)
    vmlinux = extract_vmlinux(vmlinuz, kdir / "vmlinux")
    vmlinux_h, kfuncs_h, kfuncs = _write_headers(vmlinux, kdir, kernel.release, tools["bpftool"])
    bar.update(1)

    bar.set_postfix_str(steps[3])
    order = [apts[kernel.suite]] + [a for s, a in apts.items() if s != kernel.suite and a.updated]
    guest = _assemble_guest(order, debs, stage, progress)
    bar.update(1)

    bar.set_postfix_str(steps[4])
    include_dirs = [kdir]
    for pkg in HEADER_PACKAGES:
        for apt in order:
            if apt.version(pkg) is None:
                continue
            root = _extract(apt.download([pkg], debs)[pkg], stage)
            if (root / "usr/include/bpf/bpf_helpers.h").exists():
                inc = cache / "include"
                if inc.exists():
                    shutil.rmtree(inc)
                shutil.copytree(root / "usr/include", inc)
                include_dirs.append(inc)
            break
    bar.update(1)

    bar.set_postfix_str(steps[5])
    initramfs = cache / "initramfs.cpio.gz"
    size = _build_initramfs(guest, initramfs)
    tools_initramfs = cache / "tools.cpio.gz"
    tools_size = _build_tools_initramfs(guest, tools_initramfs)
    bar.update(1)
    bar.close()

    info = SetupInfo(
        cache_dir=cache, kernel_release=kernel.release, kernel_suite=kernel.suite,
        kernel_packages=kernel.packages, vmlinuz=vmlinuz, vmlinux=vmlinux, kernel_config=config,
        vmlinux_h=vmlinux_h, kfuncs_h=kfuncs_h, include_dirs=include_dirs, kfuncs=kfuncs,
        initramfs=initramfs, initramfs_bytes=size, tools_initramfs=tools_initramfs,
        tools_initramfs_bytes=tools_size, guest_packages=guest.versions,
        guest_programs=guest.programs, bpftool_version=_bpftool_version(guest),
        qemu=tools["qemu"], clang=tools["clang"], setup_seconds=round(time.monotonic() - t0, 2))
    with tempfile.NamedTemporaryFile("w", dir=cache, delete=False, suffix=".json") as fh:
        fh.write(json.dumps(json.loads(info.model_dump_json()), indent=2))
    os.replace(fh.name, _manifest(cache))
    return info
