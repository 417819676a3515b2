"""A private apt configuration per Debian suite: query, download and unpack packages into the cache.

Why private: packages from newer suites (sid, trixie-backports) are only ever
*unpacked* (``dpkg-deb -x``) under the cache; nothing is installed on the
host and the host's own apt state is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .host_tools import run_tool
from .info import SetupError


def host_mirror() -> str:
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
class PrivateApt:
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
        run_tool(["apt-get", *self.opts(), "update"], f"apt-get update ({self.suite})")
        self.updated = True
        self._versions.clear()  # answers from the old lists (e.g. "not there") no longer hold
        self._depends.clear()

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
            run_tool(["apt-get", *self.opts(), "download", *missing], f"apt-get download ({self.suite})", cwd=dest)
            for p in missing:
                hits = sorted(dest.glob(f"{p}_*.deb"), key=lambda d: d.stat().st_mtime)
                if not hits:
                    raise SetupError(f"apt-get download {p} produced no .deb")
                out[p] = hits[-1]
        return out


def deb_field(deb: Path, fieldname: str) -> str:
    return run_tool(["dpkg-deb", "-f", str(deb), fieldname], "dpkg-deb -f").stdout.strip()


def extract_deb(deb: Path, stage: Path) -> Path:
    """``dpkg -x`` into ``stage/<deb stem>`` once (idempotent)."""
    target = stage / deb.stem
    if not (target / ".done").exists():
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        run_tool(["dpkg-deb", "-x", str(deb), str(target)], f"dpkg-deb -x {deb.name}")
        (target / ".done").touch()
    return target

