"""A Python runtime for the guest, as an extra initramfs archive: to run aios's host-mode loader in the VM.

Why: host mode (``libbpf.HostScheduler``: libbpf through ctypes, the SCX enums set
from the running kernel's BTF, ``/sys/kernel/sched_ext/state`` watched) is meant for
machines whose own kernel has sched_ext — this one's has not.  The micro-VM's kernel
has, so the same Python code is proved there: this archive carries CPython, pydantic
and libbpf from the guest kernel's Debian suite (never the host's: ABI and glibc
must match the guest) and is appended only to the boots that need it (``MicroVM.run(
archives=[...])``); normal boots stay small.  Built once on demand, then cached.

Public API::

    ensure_python_guest(info) -> Path      # cache/python-guest.cpio.gz
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from .apt import PrivateApt, host_mirror
from .closure import Unpacker
from .info import SetupError, SetupInfo, locked
from .initramfs import write_cpio

#: Pure-Python dependencies of the loader code (pydantic and what it needs), plus libbpf for ctypes.
PACKAGES = ("python3-pydantic", "python3-pydantic-core", "python3-typing-extensions", "python3-annotated-types",
            "python3-typing-inspection", "libbpf1")
#: Parts of the standard library a loader never needs (they are half its size).
_SKIP_STDLIB = re.compile(r"^usr/lib/python3\.\d+/(test|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data|"
                          r"config-[^/]*|__phello__|unittest/test|sqlite3/test|ctypes/test)(/|$)|/__pycache__/")
ARCHIVE = "python-guest.cpio.gz"


def ensure_python_guest(info: SetupInfo) -> Path:
    """The cached archive (built on first use from the guest kernel's suite; needs the mirror once)."""
    out = info.cache_dir / ARCHIVE
    stamp = out.with_suffix(".json")
    if out.is_file() and stamp.is_file():
        return out
    with locked(info.cache_dir):
        if out.is_file() and stamp.is_file():
            return out
        versions = _build(info, out)
        stamp.write_text(json.dumps(versions, indent=1))
    return out


def _build(info: SetupInfo, out: Path) -> dict[str, str]:
    apt = PrivateApt(info.cache_dir / "apt" / info.kernel_suite, info.kernel_suite, host_mirror())
    up = Unpacker([apt], info.cache_dir / "debs", info.cache_dir / "stage")
    minimal = next((name for group in apt.depends("python3-minimal") for name in group
                    if re.fullmatch(r"python3\.\d+-minimal", name)), None)
    if minimal is None and not apt.updated:
        apt.update()
        minimal = next((name for group in apt.depends("python3-minimal") for name in group
                        if re.fullmatch(r"python3\.\d+-minimal", name)), None)
    if minimal is None:
        raise SetupError(f"no python3.X-minimal behind python3-minimal in Debian {info.kernel_suite}")
    ver = minimal.removeprefix("python").removesuffix("-minimal")        # "3.14"
    pkgs = [minimal, f"libpython{ver}-minimal", f"libpython{ver}-stdlib", *PACKAGES]
    for pkg in pkgs:
        if up.fetch(pkg) is None:
            raise SetupError(f"{pkg} is not in Debian {info.kernel_suite}: cannot build the guest Python")
    files: dict[str, Path] = {}
    links: dict[str, str] = {}
    interp = f"usr/bin/python{ver}"
    files[interp] = up.roots[minimal] / interp
    links["usr/bin/python3"] = f"python{ver}"
    up.add_closure(files[interp], minimal, files, links)
    for pkg in pkgs:
        root = up.roots[pkg]
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith(("usr/lib/python3", "usr/lib/x86_64-linux-gnu/libbpf")) or _SKIP_STDLIB.search(rel):
                continue
            if path.is_symlink():
                links[rel] = str(path.readlink())
            elif path.is_file():
                files[rel] = path
    # Extension modules and libbpf need their own libraries; a module whose library is not in the
    # suite's declared dependencies is left out (the loader does not import it).
    for rel, path in list(files.items()):
        if rel.endswith(".so") or ".so." in rel:
            owner = next((p for p, r in up.roots.items() if path.resolve().is_relative_to(r.resolve())), minimal)
            try:
                up.add_closure(path, owner, files, links)
            except SetupError:
                del files[rel]
    entries: list[tuple[str, int, bytes | str]] = []
    dirs: set[str] = set()
    for rel in sorted(set(files) | set(links)):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs and d not in ("usr", "usr/bin", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu"):
                dirs.add(d)
                entries.append((d, stat.S_IFDIR | 0o755, b""))
    for rel, path in sorted(files.items()):
        entries.append((rel, stat.S_IFREG | (0o755 if rel.startswith("usr/bin/") or ".so" in rel else 0o644),
                        path.read_bytes()))
    for rel, target in sorted(links.items()):
        if rel not in files:
            entries.append((rel, stat.S_IFLNK | 0o777, target))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(write_cpio(entries))
    tmp.replace(out)
    return {"python": ver, **{p: up.versions.get(p, "") for p in pkgs}}
