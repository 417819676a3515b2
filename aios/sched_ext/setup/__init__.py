"""Fetch, cache and assemble everything the sched_ext micro-VM needs (``ensure_setup``).

Why this exists: the host kernel has no ``CONFIG_SCHED_CLASS_EXT`` and its
``/dev/kvm`` cannot boot a stock kernel, so every scheduler is verified and
measured inside a qemu micro-VM running a newer Debian kernel.  Set-up
resolves that kernel (never a hard-coded version), the guest user space
(busybox, bpftool, rt-tests, stress-ng and exactly the shared libraries their
ELF files need), the build inputs (``vmlinux.h``, kfunc prototypes, libbpf
headers) and the kernel's own ``tools/sched_ext`` tree, and caches them, so
that a machine that has run it once never needs the mirror again.

One concept per module:

* ``info``          — ``SetupInfo`` (what the cache holds), ``load_setup``, the cache lock
* ``host_tools``    — qemu/clang/bpftool/zstd on the host
* ``apt``           — a private apt configuration per Debian suite (nothing installed on the host)
* ``kernel``        — kernel resolution, ``vmlinux`` extraction
* ``btf_headers``   — BTF → ``vmlinux.h`` and kfunc prototypes
* ``kernel_source`` — ``linux-source-X.Y`` → ``tools/sched_ext`` (upstream headers and schedulers)
* ``closure``       — guest programs and their shared-library closure
* ``initramfs``     — ``/init``, the cpio writer, the archives

Public API::

    info = ensure_setup(cache_dir=None, progress=True, refresh=False) -> SetupInfo
    load_setup(cache_dir=None) -> SetupInfo | None      # no network, no building
    write_cpio(entries, compress=True) -> bytes         # newc archive, used by vm.py
    default_cache_dir() -> Path
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .apt import PrivateApt, extract_deb, host_mirror
from .btf_headers import kfunc_prototypes, write_headers
from .closure import assemble_guest
from .host_tools import best_clang, host_tools, run_tool
from .info import (
    BOOT_MARK,
    EXIT_MARK,
    GUEST_JOB,
    HEADER_PACKAGES,
    KERNEL_SUITES,
    LAYOUT_VERSION,
    RESULT_MARK,
    SetupError,
    SetupInfo,
    default_cache_dir,
    load_setup,
    locked,
    manifest_path,
)
from .initramfs import INIT_SCRIPT, build_initramfs, build_tools_initramfs, write_cpio
from .kernel import Kernel, extract_vmlinux, kernel_has_sched_ext, resolve_kernel
from .kernel_source import fetch_sched_ext_tree, source_package

__all__ = ["BOOT_MARK", "EXIT_MARK", "GUEST_JOB", "INIT_SCRIPT", "LAYOUT_VERSION", "RESULT_MARK", "SetupError",
           "SetupInfo", "default_cache_dir", "ensure_setup", "extract_vmlinux", "host_tools", "kernel_has_sched_ext",
           "kfunc_prototypes", "load_setup", "run_tool", "write_cpio"]


def ensure_setup(cache_dir: Path | str | None = None, progress: bool = True, refresh: bool = False,
                 retry_sources: bool = False) -> SetupInfo:
    """Make sure the kernel, guest initramfs and build headers are cached; return what is there.

    Idempotent and cheap when already done (reads ``setup.json``).  The first
    run needs the Debian mirror (about 40 MB of downloads); ``refresh=True``
    re-resolves the current sid kernel even when a cache exists.  Raises
    ``SetupError`` with an install hint when qemu, clang, bpftool, zstd or a
    package is missing.  Safe to call from several processes at once.

    The kernel's ``tools/sched_ext`` tree (upstream headers and example
    schedulers) is fetched once more (164 MB download, 0.4 MB kept); when that
    fails the rest of the set-up stands and ``SetupInfo.scx_missing`` says why
    (``retry_sources=True``, as ``aios sched setup`` passes, tries again).
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not refresh:
        info = load_setup(cache)
        if info is not None and (info.scx_include is not None or (info.scx_missing and not retry_sources)) \
                and info.clang == best_clang():
            return info
    tools = host_tools()
    t0 = time.monotonic()
    with locked(cache):
        info = None if refresh else load_setup(cache)
        if info is None:
            info = _do_setup(cache, tools, progress, t0)
        if info.clang != tools["clang"]:  # a newer clang was installed since: builds use it from now on
            info = info.model_copy(update={"clang": tools["clang"]})
            _save(info)
        if info.scx_include is None and (retry_sources or not info.scx_missing):
            info = _add_sched_ext_tree(info, progress)
        return info


def _do_setup(cache: Path, tools: dict[str, str], progress: bool, t0: float) -> SetupInfo:
    from tqdm import tqdm

    steps = ["apt lists", "kernel", "vmlinux + BTF headers", "guest packages", "libbpf headers", "initramfs"]
    bar = tqdm(total=len(steps), desc="aios sched setup", unit="step", disable=not progress)
    mirror = host_mirror()
    debs = cache / "debs"
    stage = cache / "stage"
    apts = {s: PrivateApt(cache / "apt" / s, s, mirror) for s in KERNEL_SUITES}

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
    kernel: Kernel | None = None
    for s in KERNEL_SUITES:
        if not apts[s].updated:
            continue
        try:
            k = resolve_kernel(apts[s], debs, stage)
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
    vmlinux_h, kfuncs_h, kfuncs = write_headers(vmlinux, kdir, kernel.release, tools["bpftool"])
    bar.update(1)

    bar.set_postfix_str(steps[3])
    order = [apts[kernel.suite]] + [a for s, a in apts.items() if s != kernel.suite and a.updated]
    guest = assemble_guest(order, debs, stage, progress)
    bar.update(1)

    bar.set_postfix_str(steps[4])
    include_dirs = [kdir]
    for pkg in HEADER_PACKAGES:
        for apt in order:
            if apt.version(pkg) is None:
                continue
            root = extract_deb(apt.download([pkg], debs)[pkg], stage)
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
    size = build_initramfs(guest, initramfs)
    tools_initramfs = cache / "tools.cpio.gz"
    tools_size = build_tools_initramfs(guest, tools_initramfs)
    bar.update(1)
    bar.close()

    info = SetupInfo(
        cache_dir=cache, kernel_release=kernel.release, kernel_suite=kernel.suite,
        kernel_packages=kernel.packages, vmlinuz=vmlinuz, vmlinux=vmlinux, kernel_config=config,
        vmlinux_h=vmlinux_h, kfuncs_h=kfuncs_h, include_dirs=include_dirs, kfuncs=kfuncs,
        initramfs=initramfs, initramfs_bytes=size, tools_initramfs=tools_initramfs,
        tools_initramfs_bytes=tools_size, guest_packages=guest.versions,
        guest_programs=guest.programs, bpftool_version=guest.versions.get("bpftool", ""),
        qemu=tools["qemu"], clang=tools["clang"], setup_seconds=round(time.monotonic() - t0, 2))
    _save(info)
    return info


def _save(info: SetupInfo) -> None:
    with tempfile.NamedTemporaryFile("w", dir=info.cache_dir, delete=False, suffix=".json") as fh:
        fh.write(json.dumps(json.loads(info.model_dump_json()), indent=2))
    os.replace(fh.name, manifest_path(info.cache_dir))


def _kernel_version(info: SetupInfo) -> str:
    """The Debian version of the package that carried the guest kernel's vmlinuz."""
    for prefix in ("linux-binary-", "linux-image-"):
        for name, version in sorted(info.kernel_packages.items()):
            if name.startswith(prefix) and name[len(prefix):][:1].isdigit():
                return version
    return next(iter(info.kernel_packages.values()), "")


def _add_sched_ext_tree(info: SetupInfo, progress: bool) -> SetupInfo:
    """Fetch the kernel's ``tools/sched_ext`` for ``info``'s kernel; record why when it cannot."""
    if progress:
        print(f"aios sched setup: fetching {source_package(info.kernel_release)} (Debian {info.kernel_suite}) "
              "for the kernel's sched_ext headers and example schedulers", flush=True)
    apt = PrivateApt(info.cache_dir / "apt" / info.kernel_suite, info.kernel_suite, host_mirror())
    dest = info.cache_dir / "kernel" / info.kernel_release / "sched_ext"
    try:
        label = fetch_sched_ext_tree(apt, info.kernel_release, _kernel_version(info), dest, info.cache_dir / "debs")
    except SetupError as e:
        info = info.model_copy(update={"scx_dir": None, "scx_source": "", "scx_missing": str(e).splitlines()[0]})
    else:
        info = info.model_copy(update={"scx_dir": dest, "scx_source": label, "scx_missing": ""})
    _save(info)
    return info
