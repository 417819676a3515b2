"""Host tools set-up and builds need, located once with an install hint when missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .info import SetupError


def _which(name: str, hint: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        raise SetupError(f"`{name}` not found on PATH. Install it: {hint}")
    return path


def best_clang() -> str | None:
    """The newest ``clang-NN`` on PATH (NN >= 14), else ``clang``.

    Why the newest: clang 14 (Debian bookworm's default) emits no BTF type
    tags, so objects with ``__kptr`` fields (upstream's scx_flatcg) are refused
    by the kernel ("R1 has no valid kptr"); it also drops BTF for externs
    named ``__x`` and spills scx_qmap past the 512-byte stack.  Bookworm ships
    clang-19 as a package beside it; clang 19 in turn miscompiles 7.2's scx_qmap
    (an arena pointer reused without its ``addr_space_cast``: "R7 invalid mem
    access 'scalar'"), which clang-22 (bookworm-security) compiles correctly.
    """
    found: list[tuple[int, str]] = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        for p in Path(d).glob("clang-[0-9]*") if d and Path(d).is_dir() else []:
            m = re.fullmatch(r"clang-(\d+)", p.name)
            if m and int(m.group(1)) >= 14 and os.access(p, os.X_OK):
                found.append((int(m.group(1)), str(p)))
    return max(found)[1] if found else shutil.which("clang")


def clang_major(clang: str) -> int:
    """The major version of the clang at ``clang`` (0 if it cannot be told): from a ``clang-NN`` name,
    else from ``--version`` (a plain ``clang`` may be any version). Which version builds matters:
    scx_qmap needs 22 (see ``best_clang``)."""
    m = re.fullmatch(r"clang-(\d+)", Path(clang).name)
    if m:
        return int(m.group(1))
    try:
        out = subprocess.run([clang, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r"clang version (\d+)", out)
    return int(m.group(1)) if m else 0


def host_tools() -> dict[str, str]:
    """Locate the host tools set-up and builds need, or raise ``SetupError``."""
    clang = best_clang()
    if clang is None:
        raise SetupError("`clang` not found on PATH. Install it: sudo apt-get install clang-22 (or clang-19, clang)")
    return {
        "qemu": _which("qemu-system-x86_64", "sudo apt-get install qemu-system-x86"),
        "clang": clang,
        "bpftool": _which("bpftool", "sudo apt-get install bpftool"),
        "zstd": _which("zstd", "sudo apt-get install zstd"),
        "apt-get": _which("apt-get", "a Debian/Ubuntu host is required for `aios sched setup`"),
        "dpkg-deb": _which("dpkg-deb", "a Debian/Ubuntu host is required for `aios sched setup`"),
    }


def run_tool(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} …\n" + "\n".join(tail))
    return proc

