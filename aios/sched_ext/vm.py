"""Boot the cached sched_ext kernel in a qemu micro-VM and run one shell job in it.

Why: schedulers are untrusted code that runs in the kernel.  They are only
ever loaded inside this throw-away guest (Debian's sched_ext kernel plus a
busybox initramfs from ``setup.py``); the host kernel is never touched.

How a run works:

* the job script and any extra files (static workload binaries, BPF objects)
  go into a small per-run cpio that is *concatenated* onto the cached base
  initramfs — qemu takes one ``-initrd`` but Linux unpacks concatenated cpio
  archives — so nothing has to be rebuilt per run;
* ``/init`` mounts proc/sys/devtmpfs/bpffs, sources ``/aios/lib.sh`` and runs
  ``/aios/job.sh`` with stdout+stderr on the *second* serial port (ttyS1), so
  kernel messages (console on ttyS0) never interleave with results;
* result lines are ``@@AIOS-RESULT <json>`` (shell helper ``aios_result``) and
  files come back as base64 blocks (``aios_emit NAME FILE``);
* qemu is killed at the timeout; the guest powers itself off at the end.

Public API::

    vm = MicroVM(setup=None, cpus=2, memory_mb=512, accel=None, timeout_s=180)
    res = vm.run(script, files={"/aios/x.bpf.o": Path(...)}, timeout_s=None) -> VMResult
    res.results / res.result(kind) / res.blobs[name] / res.exit_code / res.ok
    detect_accel(setup) -> "kvm" | "tcg"

One boot can run several steps (load a scheduler, run a workload under EEVDF,
then under the scheduler): put them all in one script.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import platform
import re
import shlex
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .setup import BOOT_MARK, EXIT_MARK, GUEST_JOB, RESULT_MARK, SetupInfo, ensure_setup, write_cpio

BLOB_BEGIN = "@@AIOS-BLOB-BEGIN"
BLOB_END = "@@AIOS-BLOB-END"

#: Shell helpers available to every job (sourced before the job runs).
GUEST_LIB = r"""# aios guest helpers (sourced by /init before /aios/job.sh)
aios_result() { echo "@@AIOS-RESULT $*"; }
# aios_emit NAME FILE: send a file back to the host (base64, survives any content).
aios_emit() {
  echo "@@AIOS-BLOB-BEGIN $1"
  if [ -f "$2" ]; then base64 "$2"; fi
  echo "@@AIOS-BLOB-END $1"
}
# aios_emit_cmd NAME CMD...: run a command, send its stdout+stderr back as a blob, keep its rc.
aios_emit_cmd() {
  _n="$1"; shift
  "$@" > /tmp/.aios_emit 2>&1; _rc=$?
  aios_emit "$_n" /tmp/.aios_emit
  return $_rc
}
# aios_now_ns: monotonic-ish wall clock in ns (busybox date lacks %N on some builds).
aios_now_ns() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0000000"; }
"""

_PANIC_PATTERNS = ("Kernel panic", "BUG: ", "Oops:", "general protection fault", "watchdog: BUG: soft lockup")


class VMError(RuntimeError):
    """qemu could not be started at all (not: the job failed — see ``VMResult``)."""


class VMResult(BaseModel):
    """Everything one boot produced.

    ``exit_code`` is the job script's exit status (None when the job never
    finished: timeout, panic, or the guest died).  ``results`` are the parsed
    ``@@AIOS-RESULT`` JSON payloads in order; ``blobs`` the files sent back
    with ``aios_emit``; ``output`` the job's own stdout/stderr without marker
    lines; ``console`` the kernel console (useful when the guest crashed).
    """

    exit_code: int | None = None
    booted: bool = False
    timed_out: bool = False
    kernel_problem: str | None = None
    duration_s: float = 0.0
    accel: str = "tcg"
    guest_kernel: str = ""
    guest_cpus: int = 0
    results: list[Any] = Field(default_factory=list)
    blobs: dict[str, str] = Field(default_factory=dict)
    output: str = ""
    console: str = ""
    qemu_stderr: str = ""

    @property
    def ok(self) -> bool:
        """The job ran to completion with status 0 and the guest kernel stayed healthy."""
        return self.exit_code == 0 and not self.timed_out and self.kernel_problem is None

    def result(self, kind: str) -> dict | None:
        """Last result dict whose ``"kind"`` field equals ``kind``."""
        for r in reversed(self.results):
            if isinstance(r, dict) and r.get("kind") == kind:
                return r
        return None

    def results_of(self, kind: str) -> list[dict]:
        return [r for r in self.results if isinstance(r, dict) and r.get("kind") == kind]

    def describe_failure(self) -> str:
        """One line explaining why the run is not ``ok`` (empty when it is)."""
        if self.timed_out:
            return f"micro-VM timed out after {self.duration_s:.0f}s" + (
                "" if self.booted else " before /init ran")
        if self.kernel_problem:
            return f"guest kernel problem: {self.kernel_problem}"
        if not self.booted:
            return "guest did not boot: " + (self.console.strip().splitlines() or ["no console output"])[-1]
        if self.exit_code is None:
            return "job did not finish (guest died)"
        if self.exit_code != 0:
            return f"job exited with status {self.exit_code}"
        return ""


@dataclass(frozen=True)
class GuestFile:
    """A file for one run: its guest path and either bytes or a host path."""

    path: str
    data: bytes
    mode: int = 0o755


def _as_guest_files(files: Mapping[str, bytes | str | Path] | None) -> list[GuestFile]:
    out: list[GuestFile] = []
    for gpath, src in (files or {}).items():
        if isinstance(src, Path):
            data = src.read_bytes()
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
        else:
            data = src.encode() if isinstance(src, str) else bytes(src)
            mode = 0o755
        out.append(GuestFile("/" + gpath.lstrip("/"), data, mode))
    return out


def parse_serial(text: str) -> tuple[list[Any], dict[str, str], str, dict[str, str]]:
    """Split the result port's text into (results, blobs, plain output, boot info).

    Tolerant of ``\\r``, partial last lines and JSON that does not parse (kept
    as ``{"kind": "unparsed", "raw": ...}`` so nothing is silently lost).
    """
    results: list[Any] = []
    blobs: dict[str, str] = {}
    plain: list[str] = []
    info: dict[str, str] = {}
    blob_name: str | None = None
    blob_lines: list[str] = []
    for line in text.replace("\r", "").split("\n"):
        if blob_name is not None:
            if line.startswith(BLOB_END):
                try:
                    blobs[blob_name] = base64.b64decode("".join(blob_lines)).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    blobs[blob_name] = ""
                blob_name = None
            else:
                blob_lines.append(line.strip())
            continue
        if line.startswith(BLOB_BEGIN):
            blob_name = line[len(BLOB_BEGIN):].strip()
            blob_lines = []
        elif line.startswith(RESULT_MARK):
            payload = line[len(RESULT_MARK):].strip()
            try:
                results.append(json.loads(payload))
            except ValueError:
                results.append({"kind": "unparsed", "raw": payload})
        elif line.startswith(EXIT_MARK):
            info["exit"] = line[len(EXIT_MARK):].strip()
        elif line.startswith(BOOT_MARK):
            info["boot"] = line[len(BOOT_MARK):].strip()
        else:
            plain.append(line)
    if blob_name is not None:  # truncated blob (guest died): keep what arrived
        try:
            blobs[blob_name] = base64.b64decode("".join(blob_lines)[: len("".join(blob_lines)) // 4 * 4]).decode(
                "utf-8", "replace")
        except (binascii.Error, ValueError):
            blobs[blob_name] = ""
    return results, blobs, "\n".join(plain).strip("\n"), info


def _kernel_problem(console: str) -> str | None:
    for line in console.replace("\r", "").splitlines():
        for pat in _PANIC_PATTERNS:
            if pat in line:
                return line.strip()[:300]
    return None


class MicroVM:
    """A qemu micro-VM factory: each ``run`` is one fresh boot (nothing persists).

    ``accel``: "kvm", "tcg" or None (auto: environment ``AIOS_VM_ACCEL``, then a
    cached boot probe).  TCG uses ``thread=single`` because multi-threaded TCG
    oopses at text-patching sites when schedulers load and unload.
    """

    def __init__(self, setup: SetupInfo | None = None, *, cpus: int = 2, memory_mb: int = 512,
                 accel: str | None = None, timeout_s: float = 180.0, kernel_args: str = "") -> None:
        self.setup = setup or ensure_setup(progress=False)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.kernel_args = kernel_args
        self._accel = accel or os.environ.get("AIOS_VM_ACCEL") or None

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel = detect_accel(self.setup)
        return self._accel

    def qemu_command(self, initrd: Path, console_log: Path, result_log: Path, accel: str | None = None,
                     extra_append: str = "") -> list[str]:
        """The exact qemu command line (exposed for debugging and the docs)."""
        accel = accel or self.accel
        kernel = self.setup.vmlinuz
        # The uncompressed ELF boots through PVH ~0.5 s faster under TCG.
        if self.setup.vmlinux is not None and self.setup.vmlinux.is_file() and accel == "tcg":
            kernel = self.setup.vmlinux
        if accel == "kvm":
            acc = ["-accel", "kvm", "-cpu", "host"]
        else:
            acc = ["-accel", "tcg,thread=single", "-cpu", "max"]
        append = ("console=ttyS0 panic=-1 oops=panic quiet loglevel=3 printk.devkmsg=on "
                  "mitigations=off nokaslr rdinit=/init "
                  f"{self.kernel_args} {extra_append}").strip()
        return [
            self.setup.qemu, *acc, "-smp", str(self.cpus), "-m", f"{self.memory_mb}M",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", f"file:{console_log}", "-serial", f"file:{result_log}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        ]

    def run(self, script: str, files: Mapping[str, bytes | str | Path] | None = None,
            timeout_s: float | None = None, accel: str | None = None, tools: bool | None = None,
            archives: Sequence[Path] = ()) -> VMResult:
        """Boot, run ``script`` (POSIX sh, busybox) as ``/aios/job.sh``, power off, return results.

        ``files`` maps guest paths to bytes/str/host ``Path``; they appear in
        the guest before the job starts.  The job's status becomes
        ``VMResult.exit_code``.  ``tools``: append the workload-tools archive
        (stress-ng …); None = only when the script names one of those programs.
        ``archives``: more cpio archives for this boot only (e.g. the guest
        Python of ``setup.python_guest``).
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        accel = accel or self.accel
        entries: list[tuple[str, int, bytes | str]] = [("aios", stat.S_IFDIR | 0o755, b"")]
        dirs: set[str] = {"aios"}
        gfiles = _as_guest_files(files)
        for gf in gfiles:
            parts = Path(gf.path.lstrip("/")).parts[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    entries.append((d, stat.S_IFDIR | 0o755, b""))
        entries.append(("aios/lib.sh", stat.S_IFREG | 0o644, GUEST_LIB))
        job = ". /aios/lib.sh\n" + script  # helpers (aios_result, aios_emit) for the job's own shell
        entries.append((GUEST_JOB.lstrip("/"), stat.S_IFREG | 0o755, job))
        entries += [(gf.path.lstrip("/"), stat.S_IFREG | gf.mode, gf.data) for gf in gfiles]
        extra = write_cpio(entries)

        with tempfile.TemporaryDirectory(prefix="aios-vm-") as tmp:
            t = Path(tmp)
            initrd = t / "initrd.img"
            with open(initrd, "wb") as out:
                out.write(self.setup.initramfs.read_bytes())
                if tools is None:
                    tools = any(re.search(rf"\b{re.escape(p)}\b", script) for p in self.setup.tools_programs)
                if tools and self.setup.tools_initramfs is not None and self.setup.tools_initramfs.is_file():
                    out.write(self.setup.tools_initramfs.read_bytes())
                for p in [*self.setup.extra_initramfs, *archives]:
                    out.write(Path(p).read_bytes())
                out.write(extra)
            console_log, result_log = t / "console.log", t / "result.log"
            cmd = self.qemu_command(initrd, console_log, result_log, accel)
            return self._boot(cmd, console_log, result_log, timeout, accel)

    def _boot(self, cmd: list[str], console_log: Path, result_log: Path, timeout: float, accel: str) -> VMResult:
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise VMError(f"cannot start qemu ({cmd[0]}): {e}") from e
        timed_out = False
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            _, err = proc.communicate()
        duration = time.monotonic() - t0
        console = console_log.read_text(errors="replace") if console_log.exists() else ""
        serial = result_log.read_text(errors="replace") if result_log.exists() else ""
        results, blobs, plain, info = parse_serial(serial)
        exit_code = None
        if "exit" in info:
            try:
                exit_code = int(info["exit"])
            except ValueError:
                exit_code = None
        boot = info.get("boot", "").split()
        ncpu = next((int(x.split("=")[1]) for x in boot if x.startswith("ncpu=")), 0)
        return VMResult(
            exit_code=exit_code, booted="boot" in info, timed_out=timed_out,
            kernel_problem=_kernel_problem(console), duration_s=round(duration, 3), accel=accel,
            guest_kernel=boot[0] if boot else "", guest_cpus=ncpu, results=results, blobs=blobs,
            output=plain, console=console, qemu_stderr=(err or b"").decode(errors="replace")[-4000:])


def sh_quote(s: str) -> str:
    """Quote for the guest's POSIX shell."""
    return shlex.quote(s)


def detect_accel(setup: SetupInfo) -> str:
    """'kvm' when a short boot probe succeeds under KVM, else 'tcg'; cached per host kernel.

    A ``/dev/kvm`` is not enough: paravirtual KVM (PVM) exposes one that
    cannot boot a stock kernel, so the probe actually boots the guest.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = setup.cache_dir / "accel.json"
    key = f"{platform.release()}|{setup.kernel_release}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
            return cached["accel"]
    except (OSError, ValueError):
        pass
    vm = MicroVM(setup, cpus=1, memory_mb=256, accel="kvm", timeout_s=20)
    try:
        res = vm.run("echo probe", timeout_s=20, accel="kvm")
        accel = "kvm" if res.ok and res.booted else "tcg"
    except VMError:
        accel = "tcg"
    try:
        cache.write_text(json.dumps({"key": key, "accel": accel}))
    except OSError:
        pass
    return accel


def probe_guest(vm: MicroVM) -> dict[str, Any]:
    """Boot once and report what the guest sees (kernel, CPUs, sched_ext state, tools)."""
    res = vm.run(
        'aios_result "{\\"kind\\":\\"probe\\",\\"uname\\":\\"$(uname -r)\\",\\"ncpu\\":$(nproc),'
        '\\"scx_state\\":\\"$(cat /sys/kernel/sched_ext/state)\\",'
        '\\"bpftool\\":\\"$(bpftool version 2>&1 | head -1)\\"}"\n')
    out = res.result("probe") or {}
    return {**out, "boot_s": res.duration_s, "accel": res.accel, "ok": res.ok}

