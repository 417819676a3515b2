"""The guest's user space: unpack guest packages and collect programs plus their shared-library closure.

Why by DT_NEEDED: libraries are resolved from what the ELF files actually
need, looked up in the declared Depends of the package that needs them, so
e.g. stress-ng's libEGL does not drag Mesa and LLVM into the initramfs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .apt import PrivateApt, deb_field, extract_deb
from .info import BASE_PROGRAMS, GUEST_PACKAGES, GUEST_PROGRAMS, REQUIRED_GUEST_PROGRAMS, SetupError


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
class Guest:
    files: dict[str, Path]          # guest path -> host file
    symlinks: dict[str, str]        # guest path -> target
    versions: dict[str, str]
    programs: list[str]
    tools_files: dict[str, Path] = field(default_factory=dict)   # workload tools: separate cpio
    tools_links: dict[str, str] = field(default_factory=dict)


@dataclass
class Unpacker:
    """Fetch packages on demand from the first suite that has them and unpack them under ``stage``."""

    apts: list[PrivateApt]
    debs: Path
    stage: Path
    roots: dict[str, Path] = field(default_factory=dict)       # package -> unpacked root
    apt_of: dict[str, PrivateApt] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def fetch(self, pkg: str) -> Path | None:
        if pkg in self.roots:
            return self.roots[pkg]
        for apt in self.apts:
            if apt.version(pkg) is None and not apt.updated:
                apt.ensure_lists()
            if apt.version(pkg) is None:
                continue
            deb = apt.download([pkg], self.debs)[pkg]
            self.versions[pkg] = deb_field(deb, "Version")
            self.roots[pkg] = extract_deb(deb, self.stage)
            self.apt_of[pkg] = apt
            return self.roots[pkg]
        return None

    def add_closure(self, start: Path, owner: str, files: dict[str, Path], symlinks: dict[str, str]) -> None:
        """Add the dynamic loader and every library ``start`` needs (transitively) to ``files``/``symlinks``."""
        _closure(start, owner, files, symlinks, self.roots, self.apt_of, self.fetch)


def assemble_guest(apts: list[PrivateApt], debs: Path, stage: Path, progress: bool) -> Guest:
    """Unpack guest packages and collect programs plus their shared-library closure.

    Dependencies are resolved by what the ELF files need (DT_NEEDED), looking
    in the declared Depends of the package that needs it — recursively — so
    that e.g. stress-ng's libEGL does not drag Mesa and LLVM in.
    """
    files: dict[str, Path] = {}
    symlinks: dict[str, str] = {}
    unpacker = Unpacker(apts, debs, stage)
    versions, pkg_roots, pkg_apt, fetch = unpacker.versions, unpacker.roots, unpacker.apt_of, unpacker.fetch

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
    return Guest(files, symlinks, versions, programs, tools_files, tools_links)


def _closure(start: Path, start_owner: str, files: dict[str, Path], symlinks: dict[str, str],
             pkg_roots: dict[str, Path], pkg_apt: dict[str, PrivateApt], fetch) -> None:
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


def _search_depends(owner: str, soname: str, fetch, pkg_apt: dict[str, PrivateApt]) -> tuple[Path, str] | None:
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

