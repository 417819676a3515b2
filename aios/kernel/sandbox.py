"""An OS-level sandbox for code the model writes: Linux namespaces (bubblewrap) plus resource limits.

Why: CPython's audit hooks are documented as no sandbox (a review got past ours about twenty
times). The boundary here is the Linux kernel's: each call runs in fresh namespaces made by
``bwrap``:

- **user** namespace, uid/gid 65534 inside, no capabilities; **PID** namespace (the kernel's
  process and every other process of the host are invisible, so they cannot be signalled or
  re-limited; when the call ends its namespace's init dies and takes every process with it);
  **network** namespace with nothing in it (a socket reaches no one); IPC and UTS namespaces.
- a **read-only** view of ``/usr`` (and the symlinks ``/lib``, ``/bin`` ...), the Python
  installation the sandbox runs (``sys.base_prefix``) with every site-packages directory hidden
  behind an empty read-only mount, a private ``/proc`` and minimal ``/dev``. Nothing else exists
  in it: not ``/etc``, not ``/root``, not ``/tmp``, not the kernel's data directory, not other
  agents' files, not the virtual environment.
- one **private writable directory** per call (``/work``, a tmpfs bounded by ``disk_mb``: filling
  it fails with ENOSPC inside and costs the host nothing), gone when the call ends.
- **limits**: CPU seconds, address space, file size, open files and core dumps as rlimits set in
  the child before the code runs; process count (and memory of all processes together) by a
  cgroup when the host lets us make one (a user namespace does not enforce ``RLIMIT_NPROC`` for
  root's processes); the wall-clock ``timeout`` kills the whole namespace.
- the interpreter starts with ``-I -S``: no site module, so no ``.pth`` or ``sitecustomize`` is
  ever read (and the directories they could live in are read-only and empty anyway).
- the audit hook of the old sandbox stays inside as a second layer (``_LAUNCHER``).

Output is read incrementally, at most ``max_output`` bytes per stream; past it the sandbox is
killed and the result says ``truncated`` (printing 400 MB costs the kernel 64 KiB).

Where namespaces are unavailable (no ``bwrap``, or the host forbids user namespaces) the call
fails with ``SandboxUnavailable``: code never runs unconfined.
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SandboxUnavailable(Exception):
    """This host cannot build the sandbox (no bubblewrap or no user namespaces): nothing ran."""

    error_type = "SandboxUnavailable"


class SandboxTimeout(Exception):
    error_type = "ToolTimeout"


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 5.0  # wall clock, seconds
    memory_mb: int = 256  # address space per process (and, with a cgroup, all of them together)
    file_mb: int = 1  # largest file the code may write
    disk_mb: int = 16  # size of the private writable directory
    pids: int = 16  # processes and threads at once (cgroup)
    nofile: int = 64
    max_output: int = 65536  # bytes kept per stream
    audit_hook: bool = True  # the second layer; tests turn it off to attack the namespaces alone

    @property
    def cpu_s(self) -> int:
        return max(1, int(self.timeout) + 1)


# -- the view of the filesystem ----------------------------------------------------------------------
def _interpreter() -> Path:
    """The base interpreter (not a venv's symlink), so the venv's site-packages is never involved."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def _site_dirs() -> list[str]:
    """Every directory a Python on this host may read ``.pth`` files or packages from at start-up."""
    dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
    dirs |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    dirs |= {p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))}
    for base in {sys.base_prefix, sys.prefix, "/usr", "/usr/local"}:
        for pattern in ("lib*/python3*/site-packages", "lib*/python3*/dist-packages", "lib/python3/dist-packages"):
            dirs |= {str(p) for p in Path(base).glob(pattern)}
    return sorted({os.path.realpath(d) for d in dirs if d})


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def bwrap_argv(limits: SandboxLimits) -> list[str]:
    """The bubblewrap command line (everything up to the interpreter)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--die-with-parent",
            "--new-session", "--disable-userns", "--cap-drop", "ALL"]  # fmt: skip
    ro_roots = ["/usr"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("lib", "lib64", "lib32", "bin", "sbin"):
        p = Path("/") / top
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), str(p)]
            ro_roots.append(str(p))
    prefix = os.path.realpath(sys.base_prefix)
    if not _under(prefix, ro_roots):
        argv += ["--ro-bind", prefix, prefix]
        ro_roots.append(prefix)
    for d in _site_dirs():  # hidden: an empty, read-only directory in its place
        if _under(d, ro_roots) and os.path.isdir(d):
            argv += ["--tmpfs", d, "--remount-ro", d]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(limits.disk_mb << 20), "--tmpfs", "/work", "--chdir", "/work"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work",
             "--setenv", "LANG", "C.UTF-8"]  # fmt: skip
    return argv


@functools.cache
def probe() -> str | None:
    """Why the sandbox cannot run on this host (None when it can). A fact about the host: cached."""
    try:
        argv = bwrap_argv(SandboxLimits()) + [str(_interpreter()), "-I", "-S", "-c", "print('ok')"]
    except SandboxUnavailable as exc:
        return str(exc)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to start: {exc}"
    if out.returncode != 0 or out.stdout.strip() != "ok":
        return f"bubblewrap cannot create namespaces here: {out.stderr.strip()[:300]}"
    return None


# -- cgroup (v1 ``pids``/``memory`` or v2), best effort ------------------------------------------------
class _Cgroup:
    """A per-call cgroup bounding processes and total memory; absent when the host has none for us."""

    # (hierarchy, file bounding processes, file bounding memory): cgroup v1 controllers, then v2
    ROOTS = (("/sys/fs/cgroup/pids", "pids.max", None), ("/sys/fs/cgroup/memory", None, "memory.limit_in_bytes"),
             ("/sys/fs/cgroup/unified", "pids.max", "memory.max"), ("/sys/fs/cgroup", "pids.max", "memory.max"))  # fmt: skip

    def __init__(self, limits: SandboxLimits):
        self.dirs: list[Path] = []
        name = f"aios-sandbox-{uuid.uuid4().hex[:12]}"
        bounded: set[str] = set()
        for root, pids_file, mem_file in self.ROOTS:
            wanted = {f for f in (pids_file, mem_file) if f and f.split(".")[0] not in bounded}
            if not wanted or not (Path(root) / "cgroup.procs").exists():
                continue
            d = Path(root) / name
            try:
                d.mkdir()
            except OSError:
                continue
            done = set()
            for f in wanted:
                value = limits.pids if f.startswith("pids") else 2 * limits.memory_mb << 20
                try:
                    (d / f).write_text(str(value))
                    done.add(f.split(".")[0])
                except OSError:
                    pass
            if done:
                bounded |= done
                self.dirs.append(d)
            else:
                d.rmdir()

    def wrap(self, argv: list[str]) -> list[str]:
        """Join the cgroups, then exec ``argv`` (no ``preexec_fn``: unsafe in a threaded kernel)."""
        if not self.dirs:
            return argv
        joins = " && ".join(f"echo $$ > {d / 'cgroup.procs'}" for d in self.dirs)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "aios-sandbox", *argv]

    def close(self) -> None:
        for d in self.dirs:
            for _ in range(100):  # the namespace's processes are dying; the directory empties
                try:
                    d.rmdir()
                    break
                except OSError:
                    for pid in (d / "cgroup.procs").read_text().split() if d.exists() else []:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, ValueError):
                            pass
                    time.sleep(0.02)


# -- the launcher: limits, then the audit hook (second layer), then the code --------------------------
_LAUNCHER = """
import os, resource, sys
for lim, v in ((resource.RLIMIT_CPU, {cpu}), (resource.RLIMIT_AS, {mem}), (resource.RLIMIT_FSIZE, {fsize}),
               (resource.RLIMIT_NOFILE, {nofile}), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, {pids})):
    resource.setrlimit(lim, (v, v))
code = sys.stdin.read()
def _install():
    realpath, isinst, str_, bytes_ = os.path.realpath, isinstance, str, bytes
    cwd = realpath(os.getcwd()) + os.sep
    ro = tuple(realpath(p) + os.sep for p in {{sys.prefix, sys.base_prefix, sys.exec_prefix}})
    deny = ("os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "subprocess.Popen", "ctypes.",
            "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link", "os.chroot", "gc.",
            "sys._current_frames", "sys.setprofile", "sys.settrace", "sys.addaudithook", "code.__new__",
            "function.__new__", "cpython.", "socket.", "resource.setrlimit", "resource.prlimit")
    blocked = ("ctypes", "_ctypes", "socket", "_socket", "_posixsubprocess", "gc", "_ssl")
    special = ("__code__", "__defaults__", "__kwdefaults__", "__closure__", "__globals__")

    def inside(p, roots):
        try:
            p = os.fspath(p)
        except TypeError:
            return False
        return (realpath(p if isinst(p, str_) else p.decode()) + "/").startswith(roots)

    def guard(event, args):
        if event == "open":
            path, mode = args[0], args[1]
            if isinst(path, int) or inside(path, (cwd,)):
                return
            if (mode is None or "r" in str_(mode)) and "+" not in str_(mode or "") and inside(path, ro):
                return
            raise PermissionError("sandbox: no access to " + repr(path))
        if event.startswith(deny) or (event == "import" and args[0].split(".")[0] in blocked):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "object.__setattr__" and args[1] in special:
            raise PermissionError("sandbox: rewriting functions is not allowed")

    sys.addaudithook(guard)
if {hook}:
    _install()
del _install, lim, v
exec(compile(code, "<agent>", "exec"), {{"__name__": "__main__"}})
"""


def run_sandboxed(code: str, limits: SandboxLimits | None = None) -> dict[str, Any]:
    """Run Python ``code`` in the sandbox; ``{"returncode", "stdout", "stderr", "truncated"}``.

    Raises ``SandboxUnavailable`` (nothing ran) or ``SandboxTimeout`` (everything it started is
    gone when this returns)."""
    limits = limits or SandboxLimits()
    why = probe()
    if why is not None:
        raise SandboxUnavailable(f"the python tool needs Linux namespaces: {why}")
    launcher = _LAUNCHER.format(
        cpu=limits.cpu_s, mem=limits.memory_mb << 20, fsize=limits.file_mb << 20,
        nofile=limits.nofile, pids=limits.pids, hook=limits.audit_hook,
    )  # fmt: skip
    argv = bwrap_argv(limits) + [str(_interpreter()), "-I", "-S", "-X", "utf8", "-c", launcher]
    cg = _Cgroup(limits)
    try:
        proc = subprocess.Popen(
            cg.wrap(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        try:
            out, err, truncated, timed_out = _collect(proc, code.encode(), limits)
        finally:
            _kill(proc)
    finally:
        cg.close()
    if timed_out:
        raise SandboxTimeout(f"python code did not finish within {limits.timeout:g}s (killed)")
    return {
        "returncode": proc.returncode,
        "stdout": out.decode("utf-8", "replace"),
        "stderr": err.decode("utf-8", "replace"),
        "truncated": truncated,
    }


def _kill(proc: subprocess.Popen) -> None:
    """Kill the sandbox's process group (bwrap, hence the PID namespace) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def _collect(proc: subprocess.Popen, stdin: bytes, limits: SandboxLimits) -> tuple[bytes, bytes, bool, bool]:
    """Feed stdin, read both streams as they come, never more than ``max_output`` each."""
    deadline = time.monotonic() + limits.timeout
    in_fd, out_fd, err_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    os.set_blocking(in_fd, False)
    pending = memoryview(stdin)
    sel.register(in_fd, selectors.EVENT_WRITE)
    truncated = timed_out = False
    open_reads = 2
    try:
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(left, 0.5)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        n = os.write(fd, pending[:65536])
                    except (BrokenPipeError, BlockingIOError):
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_reads -= 1
                    continue
                buf = bufs[fd]
                room = limits.max_output - len(buf)
                buf += chunk[: max(room, 0)]
                if len(chunk) > room:
                    truncated = True
            if truncated:
                break
        if not timed_out and not truncated:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()) + 0.5)
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        sel.close()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), truncated, timed_out
