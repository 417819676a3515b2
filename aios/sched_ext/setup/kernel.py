"""Resolve the guest kernel (never a hard-coded version) and unpack its vmlinuz, config and vmlinux.

Why resolution at set-up time: sid keeps only current versions, so the
cloud-amd64 metapackage is followed to whatever ``linux-binary-…`` it names
today, and the result is cached.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .apt import PrivateApt, deb_field, extract_deb
from .info import KERNEL_METAPACKAGE, SetupError


@dataclass
class Kernel:
    suite: str
    release: str
    packages: dict[str, str]
    vmlinuz: Path
    config: Path


def resolve_kernel(apt: PrivateApt, debs: Path, stage: Path) -> Kernel:
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
        versions[name] = deb_field(deb, "Version")
        root = extract_deb(deb, stage)
        for cand in list(root.glob("usr/lib/modules/*/vmlinuz")) + list(root.glob("boot/vmlinuz-*")):
            vmlinuz = cand
        for cand in list(root.glob("usr/lib/modules/*/config")) + list(root.glob("boot/config-*")):
            config = cand
    if vmlinuz is None or config is None:
        raise SetupError(f"kernel packages {sorted(got)} from {apt.suite} hold no vmlinuz/config")
    release = vmlinuz.parent.name if vmlinuz.name == "vmlinuz" else vmlinuz.name.removeprefix("vmlinuz-")
    return Kernel(apt.suite, release, versions, vmlinuz, config)


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

