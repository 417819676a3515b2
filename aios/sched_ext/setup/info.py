"""What the sched_ext set-up cache holds (``SetupInfo``), where it lives, and how to read it back.

Why its own module: every other part of the toolchain (build, vm, verifier)
only needs to *read* the cache; it must not import the apt client or the
initramfs writer to do so.  ``load_setup`` never touches the network.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
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
    #: the kernel's own ``tools/sched_ext`` (``include/scx/*.h`` and the example schedulers),
    #: from the ``linux-source-X.Y`` package matching the guest kernel (kernel_source.py)
    scx_dir: Path | None = None
    scx_source: str = ""           # "linux-source-7.2 7.2.13-1"
    #: why ``scx_dir`` is missing (empty when present or never tried)
    scx_missing: str = ""

    @property
    def scx_include(self) -> Path | None:
        """The directory to put on ``-I`` so ``#include <scx/common.bpf.h>`` resolves."""
        inc = self.scx_dir / "include" if self.scx_dir else None
        return inc if inc is not None and (inc / "scx" / "common.bpf.h").is_file() else None

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
            "sched_ext:  " + (f"{self.scx_dir} ({self.scx_source})" if self.scx_include
                              else f"missing: {self.scx_missing or 'not fetched'}"),
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """``$AIOS_CACHE_DIR/sched_ext`` or ``~/.cache/aios/sched_ext``."""
    return cache_root() / "sched_ext"


def manifest_path(cache: Path) -> Path:
    return cache / "setup.json"


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
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
    path = manifest_path(cache)
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


