"""The guest's initramfs: ``/init``, a newc cpio writer (no ``cpio`` binary needed) and the archives.

Why two archives: the base one boots every run; the workload tools (stress-ng
and its libraries, ~30 MB unpacked) are appended only to boots that use them,
because unpacking under TCG costs seconds per boot.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .closure import Guest

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


def build_tools_initramfs(guest: Guest, out: Path) -> int:
    data = write_cpio(_file_entries(guest.tools_files, guest.tools_links))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(data)


def build_initramfs(guest: Guest, out: Path) -> int:
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
