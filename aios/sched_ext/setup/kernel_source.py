"""The kernel's own sched_ext tree (``tools/sched_ext``) for the resolved guest kernel.

Why: programs written against upstream's headers (``#include <scx/common.bpf.h>``,
``SCX_OPS_DEFINE``, ``UEI_DEFINE``, the compat wrappers) and the kernel's example
schedulers (scx_simple, scx_central, scx_flatcg, scx_qmap, …) only exist in the
kernel source.  Debian ships it as ``linux-source-X.Y`` (164 MB for 7.2) in the
suite that gave the guest kernel; only ``tools/sched_ext`` (~0.4 MB) is kept,
under the cache next to that kernel's ``vmlinux.h`` — never in the repository.
The .deb is streamed through ``dpkg-deb | tar | tar -xJ`` (no 160 MB intermediate
file) and deleted once its ``tools/sched_ext`` is extracted.

Public API::

    source_package(kernel_release) -> "linux-source-7.2"
    fetch_sched_ext_tree(apt, kernel_release, kernel_version, dest, debs) -> str   # "pkg version"
    read_manifest(tree) -> dict[str, str]        # relative path -> sha256 of every extracted file

The manifest (``manifest.sha256``, ``sha256sum -c`` format) is written when the tree is extracted
from the package, so ``provenance.py`` can tell later whether a program (and every header it used)
is byte-for-byte the kernel's own and whether the tree was modified since.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from .apt import PrivateApt
from .info import SetupError

#: The marker file that says ``dest`` is a complete extraction (and of what).
DONE_MARK = ".aios-source"
#: sha256 of every file extracted from the package (``sha256sum`` format, paths relative to the tree).
MANIFEST = "manifest.sha256"


def source_package(kernel_release: str) -> str:
    """``7.2.13+deb14-cloud-amd64`` → ``linux-source-7.2``."""
    m = re.match(r"(\d+)\.(\d+)", kernel_release)
    if not m:
        raise SetupError(f"cannot tell the kernel version of release {kernel_release!r}")
    return f"linux-source-{m.group(1)}.{m.group(2)}"


def tree_is_complete(dest: Path) -> bool:
    return (dest / DONE_MARK).is_file() and (dest / "include" / "scx" / "common.bpf.h").is_file()


def fetch_sched_ext_tree(apt: PrivateApt, kernel_release: str, kernel_version: str, dest: Path,
                         debs: Path) -> str:
    """Download ``linux-source-X.Y`` from ``apt``'s suite and extract only ``tools/sched_ext`` to ``dest``.

    Returns ``"<package> <version>"`` (plus the kernel's version when the two
    differ: sid may have moved on by a Debian revision).  Raises ``SetupError``
    saying what is missing; ``dest`` is only replaced by a complete tree.
    """
    if tree_is_complete(dest):
        return (dest / DONE_MARK).read_text().strip()
    pkg = source_package(kernel_release)
    version = apt.version(pkg)
    if version is None and not apt.updated:
        apt.update()
        version = apt.version(pkg)
    if version is None:
        raise SetupError(f"{pkg} is not in Debian {apt.suite} ({apt.mirror}): the kernel's sched_ext headers "
                         "(scx/common.bpf.h) and example schedulers are unavailable, so upstream programs will "
                         "not compile; aios's own schedulers are unaffected")
    if version.split("-")[0] != kernel_version.split("-")[0]:
        raise SetupError(f"{pkg} in Debian {apt.suite} is {version} but the guest kernel is {kernel_version}: "
                         "its sched_ext headers may not match; run `aios sched setup --refresh` to move both")
    deb = apt.download([pkg], debs)[pkg]
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _stream_extract(deb, tmp)
        found = sorted(tmp.glob("*/tools/sched_ext"))
        if not found or not (found[0] / "include" / "scx" / "common.bpf.h").is_file():
            raise SetupError(f"{deb.name} holds no tools/sched_ext/include/scx/common.bpf.h")
        label = f"{pkg} {version}" + (f" (kernel {kernel_version})" if version != kernel_version else "")
        write_manifest(found[0])
        (found[0] / DONE_MARK).write_text(label + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        found[0].rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    deb.unlink(missing_ok=True)  # 164 MB; the extracted tree is the cache
    return label


def _stream_extract(deb: Path, out: Path) -> None:
    """``dpkg-deb --fsys-tarfile DEB | tar -xO usr/src/*.tar.xz | tar -xJ '*/tools/sched_ext/*'``."""
    p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    p2 = subprocess.Popen(["tar", "-xO", "--wildcards", "*usr/src/linux-source-*.tar.xz"], stdin=p1.stdout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p1.stdout is not None and p2.stdout is not None
    p1.stdout.close()
    p3 = subprocess.Popen(["tar", "-xJ", "-C", str(out), "--wildcards", "*/tools/sched_ext/*"], stdin=p2.stdout,
                          stderr=subprocess.PIPE)
    p2.stdout.close()
    err3 = p3.communicate()[1]
    err2 = p2.communicate()[1]
    err1 = p1.communicate()[1]
    for proc, err, what in ((p1, err1, "dpkg-deb --fsys-tarfile"), (p2, err2, "tar (outer)"),
                            (p3, err3, "tar -xJ (kernel source)")):
        if proc.returncode != 0:
            tail = (err or b"").decode(errors="replace").strip().splitlines()[-3:]
            raise SetupError(f"{what} failed on {deb.name} (exit {proc.returncode}): " + " ".join(tail))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(tree: Path, note: str = "") -> None:
    """Record the sha256 of every file in ``tree`` (except the markers) as ``MANIFEST``."""
    lines = [f"# {note}"] if note else []
    for f in sorted(p for p in tree.rglob("*") if p.is_file() and p.name not in (MANIFEST, DONE_MARK)):
        lines.append(f"{file_sha256(f)}  {f.relative_to(tree).as_posix()}")
    tmp = tree / (MANIFEST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(tree / MANIFEST)


def read_manifest(tree: Path) -> dict[str, str]:
    """Relative path -> sha256 of what was extracted into ``tree`` ({} when there is no complete tree).

    A tree extracted before manifests existed gets one now, from its files as they are, and says so
    in its first line: from then on any change to the tree is detected.
    """
    if not tree_is_complete(tree):
        return {}
    if not (tree / MANIFEST).is_file():
        write_manifest(tree, "recorded from the extracted tree on first use (extracted before manifests existed)")
    out = {}
    for line in (tree / MANIFEST).read_text().splitlines():
        sha, sep, rel = line.partition("  ")
        if sep and not line.startswith("#"):
            out[rel] = sha
    return out
