"""Adversarial suite (issue 13): forged identities, escapes from the ``python`` tool, starvation.

Every attempt is judged by an independent check of what it tried to harm, never by the absence of
an exception: the victim's rows read straight from ``storage.db``/``audit.db`` with a separate
read-only SQLite connection, the victim's files hashed on the host, the audit log's triggers and row
count, the ``agents`` and ``grants`` tables, canary paths on the host outside the sandbox, a loopback
listener that counts connections, a ``SIGUSR1`` handler in this (the kernel's) process, its rlimits,
and a scan of ``/proc`` for any process left behind carrying the attempt's marker.

Sandbox escapes run twice: through the kernel's ``python`` tool (both layers: namespaces and the
audit hook), and straight against the namespaces with the audit hook turned off (the OS layer alone
must hold, since the hook is known to be bypassable). Those direct runs go four at a time.

Starvation cases assert properties (the victim's call completes while hostile calls are still
queued; counters), and print the victim's latency alone and under attack for the record.
``test_zz_summary`` reports the number of attempts and of successes (must be 0).

One file (over 600 lines) on purpose: every attempt runs against one module-scoped victim world and
is tallied in one record that ``test_zz_summary`` reports; split into modules, each summary would
count only its part of the suite.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _mgr_util import make_kernel
from _util import wait_until

import aios
from aios.kernel.identity import AuthenticationFailed, Credential, CredentialRejected
from aios.kernel.memory import MemorySyscall
from aios.kernel.sandbox import SandboxLimits, _site_dirs, probe, run_sandboxed
from aios.kernel.storage import StorageSyscall
from aios.kernel.syscall import LLMSyscall, SyscallFailed, SyscallRejected
from aios.kernel.tools import ToolSyscall

pytestmark = pytest.mark.skipif(probe() is not None, reason=f"no namespace sandbox here: {probe()}")

SECRET = "SECRET-adv-9c1e"
RESULTS: dict[str, bool] = {}  # attempt id -> succeeded (the summary test reports them)
FIGURES: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# The world: a kernel, a victim with data everywhere, host-side observers
# ---------------------------------------------------------------------------------------------
class World:
    def __init__(self, root: Path):
        self.root = root
        self.kernel = make_kernel(root, workers=8, storage_quota_mb=0.5)
        self.environ = Path("/proc/self/environ").read_bytes()[:64]  # what a leak of ours would show
        self.data = root / "data"
        self.canary = root / "canary"
        self.canary.mkdir()
        self.signals = 0
        self.connections = 0
        k = self.kernel
        self.alice_token = k.identities.add("alice")
        with aios.agent_context(k, "alice"):
            self.mem_ids = [aios.memory_add(f"{SECRET} memory {i}")["id"] for i in range(3)]
            for i in range(3):
                aios.storage_put(f"k{i}", f"{SECRET} stored {i}")
            aios.file_write("notes.txt", f"{SECRET} file")
            aios.log_append(f"{SECRET} log")
            aios.grant("storage", "k0", "read", to="bob")
        self.alice_dir = k.modules["storage"].agent_dir("alice")
        self.rlimits = self._rlimits()
        self.audit_top = len(k.modules["access"].audit_log(limit=100_000))  # rows written so far stay as they are
        self.before = self.victim()
        # a loopback listener: any connection from a sandbox is an escape
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.udp.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        self.old_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, *_):
        self.signals += 1

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def udp_received(self) -> bool:
        try:
            self.udp.recv(100)
            return True
        except OSError:
            return False

    @staticmethod
    def _rlimits():
        return {n: resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")}

    def victim(self) -> tuple:
        """Alice's state and the kernel's security tables, read independently of the kernel."""
        st = sqlite3.connect(f"file:{self.data / 'storage.db'}?mode=ro", uri=True)
        au = sqlite3.connect(f"file:{self.data / 'audit.db'}?mode=ro", uri=True)
        try:
            items = st.execute("SELECT key, content, version FROM items WHERE agent='alice' ORDER BY key").fetchall()
            files = st.execute("SELECT path, sha256 FROM files WHERE agent='alice' ORDER BY path").fetchall()
            logs = st.execute("SELECT event, data FROM logs WHERE agent='alice' AND event='note'").fetchall()
            agents = au.execute(
                "SELECT name, grp, token_hash, revoked FROM agents WHERE name IN ('alice', 'kernel') ORDER BY name"
            ).fetchall()
            grants = au.execute("SELECT kind, owner, name, operation, grantee FROM grants ORDER BY 1,2,3,4,5").fetchall()
            triggers = au.execute("SELECT name FROM sqlite_master WHERE type='trigger' ORDER BY name").fetchall()
            first_rows = au.execute("SELECT * FROM audit WHERE id <= ? ORDER BY id", (self.audit_top,)).fetchall()
        finally:
            st.close()
            au.close()
        disk = {
            str(p.relative_to(self.alice_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.alice_dir.rglob("*")) if p.is_file()
        }  # fmt: skip
        memory = [(m["id"], m["content"]) for m in self.kernel.modules["memory"].list("alice")]
        return items, files, logs, agents, grants, triggers, first_rows, disk, memory

    def audit_intact(self) -> bool:
        au = sqlite3.connect(f"file:{self.data / 'audit.db'}?mode=ro", uri=True)
        try:
            n, top = au.execute("SELECT COUNT(*), MAX(id) FROM audit").fetchone()
        finally:
            au.close()
        return n == top  # ids are AUTOINCREMENT: a deleted row leaves a gap

    def harmed(self) -> list[str]:
        """Everything an attempt could have harmed, checked on the host. Empty: no harm."""
        out = []
        if self.victim() != self.before:
            out.append("victim state changed")
        if not self.audit_intact():
            out.append("audit rows deleted")
        if any(self.canary.iterdir()):
            out.append(f"canary written: {list(self.canary.iterdir())}")
        if self.signals:
            out.append(f"kernel received {self.signals} signal(s)")
        if self.connections or self.udp_received():
            out.append("a sandbox reached the loopback listener")
        if self._rlimits() != self.rlimits:
            out.append("kernel rlimits changed")
        if self.kernel.identities.group("mallory") != "user":
            out.append("mallory's group changed")
        for d in _site_dirs():
            if os.path.isdir(d) and any(f.startswith("aios-adv") for f in os.listdir(d)):
                out.append(f"file planted in {d}")
        return out

    def close(self):
        signal.signal(signal.SIGUSR1, self.old_handler)
        self.listener.close()
        self.udp.close()
        self.kernel.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("adversarial"))
    yield w
    w.close()


def leftovers(marker: str) -> list[int]:
    """Processes on the host whose command line carries ``marker`` (a short grace for the kernel to
    finish tearing down a namespace whose init just died; a hang guard, not a measurement)."""
    end = time.monotonic() + 5
    while (found := _scan(marker)) and time.monotonic() < end:
        time.sleep(0.05)
    return found


def _scan(marker: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def record(attempt: str, harmed: list[str], leaked: bool = False) -> None:
    RESULTS[attempt] = bool(harmed) or leaked
    assert not harmed and not leaked, (attempt, harmed, leaked)


# ---------------------------------------------------------------------------------------------
# 1. Identity: forged, foreign, revoked and replayed credentials; names and groups in bodies
# ---------------------------------------------------------------------------------------------
BODIES = {
    "memory-list": lambda: MemorySyscall(request={"op": "list", "owner": "alice"}),
    "memory-delete": lambda: MemorySyscall(request={"op": "delete", "id": "x", "owner": "alice"}),
    "storage-get": lambda: StorageSyscall(request={"op": "get", "key": "k1", "owner": "alice"}),
    "storage-put": lambda: StorageSyscall(request={"op": "put", "key": "k1", "content": "pwned", "owner": "alice"}),
    "file-read": lambda: StorageSyscall(request={"op": "file_read", "path": "notes.txt", "owner": "alice"}),
    "tool-python": lambda: ToolSyscall(request={"op": "call", "name": "python", "arguments": {"code": "print(1)"}}),
}
FORGERIES = {
    "none": lambda w: None,
    "handmade-alice": lambda w: Credential("alice", "user"),
    "handmade-owner": lambda w: Credential("kernel", "admin"),
    "string-alice": lambda w: "alice",
    "token-string": lambda w: w.alice_token,
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("body", sorted(BODIES))
def test_forged_credentials(world, forgery, body):
    k = world.kernel
    before = len(k.modules["access"].audit_log(outcome="denied", limit=100_000))
    got = None
    try:
        got = k.submit(BODIES[body](), FORGERIES[forgery](world)).wait(30)
    except (SyscallRejected, SyscallFailed):
        pass
    after = len(k.modules["access"].audit_log(outcome="denied", limit=100_000))
    record(f"forged-{forgery}-{body}", world.harmed() + ([] if after > before else ["refusal not audited"]),
           leaked=SECRET in repr(got))  # fmt: skip


NAMED_BODIES = {
    "memory": lambda: MemorySyscall(agent="alice", request={"op": "list"}),
    "storage": lambda: StorageSyscall(agent="alice", request={"op": "list"}),
    "tool": lambda: ToolSyscall(agent="alice", request={"op": "list"}),
    "llm-retrieve": lambda: LLMSyscall(agent="alice", request={"messages": [{"role": "user", "content": "x"}], "retrieve_k": 5}),
}


@pytest.mark.parametrize("body", sorted(NAMED_BODIES))
def test_body_naming_another_agent(world, body):
    k = world.kernel
    mallory = k.credential_for("mallory", by=k.owner)
    with pytest.raises(CredentialRejected):
        k.submit(NAMED_BODIES[body](), mallory)
    record(f"named-body-{body}", world.harmed())


IN_PROCESS = {
    "enter-alice": lambda w, k: aios.agent_context(k, "alice").__enter__(),
    "enter-alice-as-admin": lambda w, k: aios.agent_context(k, "alice", group="admin").__enter__(),
    "owner-capability": lambda w, k: k.owner,
    "spawn-with-own": lambda w, k: k.credential_for("alice", by=aios.current().credential),
    "spawn-admin-self": lambda w, k: k.credential_for("mallory", "admin", by=aios.current().credential),
    "leaked-foreign-credential": lambda w, k: k.submit(
        MemorySyscall(request={"op": "list"}), w.bob_credential
    ).wait(10),
    "replay-alice-syscall": lambda w, k: k.submit(w.alice_syscall, aios.current().credential).wait(10),
    "set-group-admin": lambda w, k: aios.set_group("mallory", "admin"),
    "agent-add-admin": lambda w, k: aios.agent_add("mallory2", "admin"),
    "agent-rotate-alice": lambda w, k: aios.agent_add("alice", rotate=True),
    "agent-revoke-alice": lambda w, k: aios.agent_revoke("alice"),
    "agent-list": lambda w, k: aios.agent_list(),
    "grant-self-alice-storage": lambda w, k: aios.grant("storage", "*", "read", to="mallory", owner="alice"),
    "check-about-alice": lambda w, k: aios.sdk.calls._access(op="check", kind="storage", owner="alice", operation="read", grantee="bob"),
    "audit-read": lambda w, k: aios.audit_log(),
    "retrieve-alice": lambda w, k: k.submit(
        LLMSyscall(agent="alice", request={"messages": [{"role": "user", "content": SECRET}], "retrieve_k": 5}),
        aios.current().credential,
    ),
}


@pytest.mark.parametrize("attempt", sorted(IN_PROCESS))
def test_in_process_forgeries(world, attempt):
    k = world.kernel
    if not hasattr(world, "bob_credential"):
        world.bob_credential = k.credential_for("bob", by=k.owner)
        with aios.agent_context(k, "alice") as ctx:
            world.alice_syscall = k.submit(MemorySyscall(request={"op": "list"}), ctx.credential)
            world.alice_syscall.wait(10)
    out = None
    with aios.agent_context(k, "mallory"):
        try:
            out = IN_PROCESS[attempt](world, k)
        except (PermissionError, SyscallRejected, SyscallFailed, AuthenticationFailed):
            pass
        still_me = aios.current().agent == "mallory"
    record(f"in-process-{attempt}", world.harmed() + ([] if still_me else ["context switched"]),
           leaked=SECRET in repr(out) or "aios_" in repr(out))  # fmt: skip


def test_revoked_credential_and_token_replayed(world):
    k = world.kernel
    token = k.identities.add("temp")
    cred = k.identities.authenticate(token)
    spawned = k.credential_for("temp", by=k.owner)
    k.identities.revoke("temp")
    world.before = world.victim()  # the revocation itself changed the agents table, on purpose
    for i, attempt in enumerate([lambda: k.identities.authenticate(token), lambda: k.submit(
            MemorySyscall(request={"op": "add", "content": "x"}), cred), lambda: k.submit(
            MemorySyscall(request={"op": "add", "content": "x"}), spawned), lambda: k.credential_for(
            "temp", by=k.owner)]):  # fmt: skip
        with pytest.raises((AuthenticationFailed, CredentialRejected)):
            attempt()
        record(f"revoked-replay-{i}", world.harmed() + (["temp stored something"] if k.modules["memory"].usage("temp")["items"] else []))
    stored_hash = sqlite3.connect(world.data / "audit.db").execute(
        "SELECT token_hash FROM agents WHERE name='alice'"
    ).fetchone()[0]
    for i, guess in enumerate([stored_hash, "aios_" + stored_hash, "aios_" + "A" * 43, token + "x", token[:-1]]):
        with pytest.raises(AuthenticationFailed):
            k.identities.authenticate(guess)
        record(f"token-guess-{i}", world.harmed())


# ---------------------------------------------------------------------------------------------
# 2. Escapes from the python tool: each via the kernel (both layers) and against the namespaces alone
# ---------------------------------------------------------------------------------------------
def escapes(w: World, marker: str) -> dict[str, str]:
    st, au = w.data / "storage.db", w.data / "audit.db"
    alice_file = w.alice_dir / "notes.txt"
    canary = w.canary / f"{marker}.txt"
    site = [d for d in _site_dirs() if os.path.isdir(d)]
    pid = os.getpid()
    return {
        "read-etc-passwd": "print(open('/etc/passwd').read())",
        "read-storage-db": f"print(open({str(st)!r}, 'rb').read())",
        "read-alice-file": f"print(open({str(alice_file)!r}).read())",
        "sqlite-uri-storage": f"import sqlite3; print(sqlite3.connect('file:{st}?mode=ro', uri=True).execute('select * from items').fetchall())",
        "sqlite-delete-items": f"import sqlite3; c = sqlite3.connect({str(st)!r}); c.execute(\"delete from items where agent='alice'\"); c.commit()",
        "sqlite-drop-audit-trigger": f"import sqlite3; c = sqlite3.connect({str(au)!r}); c.executescript('drop trigger audit_no_delete; delete from audit;')",
        "sqlite-make-admin": f"import sqlite3; c = sqlite3.connect({str(au)!r}); c.execute(\"update agents set grp='admin' where name='mallory'\"); c.commit()",
        "lying-fspath": (
            "import os\nclass P:\n  n = 0\n  def __fspath__(self):\n    P.n += 1\n"
            f"    return 'x.txt' if P.n == 1 else {str(alice_file)!r}\nprint(open(P()).read())"
        ),
        "dir-fd-traversal": f"import os; fd = os.open('/', os.O_RDONLY); print(os.read(os.open({str(alice_file)[1:]!r}, os.O_RDONLY, dir_fd=fd), 100))",
        "write-alice-file": f"open({str(alice_file)!r}, 'w').write('pwned')",
        "write-host-canary": f"open({str(canary)!r}, 'w').write('escaped')",
        "symlink-to-host": f"import os; os.symlink({str(w.canary)!r}, 'c'); open('c/{marker}.txt', 'w').write('x')",
        "write-pth-site": "\n".join(
            f"try:\n  open({os.path.join(d, 'aios-adv.pth')!r}, 'w').write('import os')\nexcept OSError: pass" for d in site
        ) or "pass",
        "write-usr": "open('/usr/aios-adv-planted', 'w').write('x')",
        "socket-tcp-loopback": f"import socket; socket.create_connection(('127.0.0.1', {w.port}), timeout=2); print('CONNECTED')",
        "socket-udp-loopback": f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', {w.udp_port})); print('SENT')",
        "socket-renamed-import": f"import importlib; s = importlib.import_module('_socket'); c = s.socket(); c.connect(('127.0.0.1', {w.port})); print('CONNECTED')",
        "kill-kernel": f"import os, signal; os.kill({pid}, signal.SIGUSR1)",
        "kill-everyone": "import os, signal\nfor p in range(1, 4096):\n  try: os.kill(p, signal.SIGUSR1)\n  except OSError: pass\ntry: os.kill(-1, signal.SIGUSR1)\nexcept OSError: pass",
        "pidfd-signal": f"import os, signal; fd = os.pidfd_open({pid}); signal.pidfd_send_signal(fd, signal.SIGUSR1)",
        "prlimit-kernel": f"import resource; resource.prlimit({pid}, resource.RLIMIT_NOFILE, (3, 3))",
        "lift-own-rlimit": "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1)); print('LIFTED')",
        "read-kernel-environ": f"print(open('/proc/{pid}/environ', 'rb').read())",
        "spawn-outliving": f"import subprocess; subprocess.Popen(['/bin/sh', '-c', 'sleep 30 # {marker}'], start_new_session=True)",
        "fork-daemon": f"import os\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '30', '{marker}'])\n  os._exit(0)",
        "fork-bomb": "import os\nn = 0\ntry:\n  while True:\n    if os.fork() == 0:\n      import time; time.sleep(20); os._exit(0)\n    n += 1\nexcept OSError: pass\nprint('FORKS', n)",
        "memory-exhaust": "x = bytearray(3 << 30); print('ALLOCATED')",
        "disk-fill": "n = 0\ntry:\n  for i in range(10_000):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 19)); n += 1\nexcept OSError: pass\nprint('WROTE', n)",
        "big-file": "open('big', 'wb').write(b'x' * (64 << 20)); print('BIG')",
        "ctypes-mount": "import ctypes; libc = ctypes.CDLL(None); print('MOUNT', libc.mount(b'none', b'/usr', b'tmpfs', 0, None))",
        "read-dev-disk": "import os; print([open('/dev/' + d, 'rb').read(16) for d in os.listdir('/dev') if d.startswith(('vd', 'sd', 'nvme', 'mem'))])",
    }


def _escape_succeeded(name: str, out: dict | None, marker: str, w: World) -> list[str]:
    text = "" if out is None else out.get("stdout", "") + out.get("stderr", "")
    bad = []
    if SECRET in text or "root:x:0:0" in text or repr(w.environ)[2:40] in text or "[b'" in text:
        bad.append("secret in output")
    if any(word in text for word in ("CONNECTED", "LIFTED", "ALLOCATED", "BIG")):
        bad.append("a forbidden effect reported success: " + text[:200])
    if "MOUNT 0" in text:
        bad.append("mounted")
    if "FORKS" in text and int(text.split("FORKS")[1].split()[0]) > SandboxLimits().pids:
        bad.append("more processes than the limit")
    if "WROTE" in text and int(text.split("WROTE")[1].split()[0]) * (1 << 19) > SandboxLimits().disk_mb << 20:
        bad.append("wrote more than the private directory holds")
    if leftovers(marker):
        bad.append(f"processes left running: {leftovers(marker)}")
    if os.path.exists("/usr/aios-adv-planted"):
        bad.append("wrote into /usr")
    return bad + w.harmed()


def _escape_names() -> list[str]:
    class _W:  # only the names are needed at collection time
        data = Path("/nonexistent")
        alice_dir = Path("/nonexistent")
        canary = Path("/nonexistent")
        port = udp_port = 1

    return sorted(escapes(_W(), "m"))


@pytest.fixture(scope="module")
def os_layer_runs(world):
    """Every escape against the namespaces alone (audit hook off), four at a time."""
    def one(name: str):
        marker = f"aios-adv-os-{name}"
        code = escapes(world, marker)[name]
        try:
            out = run_sandboxed(code, SandboxLimits(timeout=5, audit_hook=False))
        except Exception as exc:  # a typed failure (timeout) is a refusal, judged like the rest
            out = {"stdout": "", "stderr": f"{type(exc).__name__}: {exc}"}
        return name, out, leftovers(marker)

    with ThreadPoolExecutor(4) as pool:
        return {name: (out, left) for name, out, left in pool.map(one, _escape_names())}


@pytest.mark.parametrize("name", _escape_names())
def test_escape_os_layer_alone(world, os_layer_runs, name):
    out, left = os_layer_runs[name]
    harmed = _escape_succeeded(name, out, f"aios-adv-os-{name}", world) + ([f"left {left}"] if left else [])
    record(f"escape-os-{name}", harmed)


@pytest.mark.parametrize("name", _escape_names())
def test_escape_through_the_python_tool(world, name):
    marker = f"aios-adv-tool-{name}"
    code = escapes(world, marker)[name]
    out = None
    with aios.agent_context(world.kernel, "mallory"):
        try:
            out = aios.tool_call("python", {"code": code, "timeout": 5})["result"]
        except SyscallFailed as exc:
            assert exc.error.type in {"ToolTimeout", "ToolError"}, exc.error
    record(f"escape-tool-{name}", _escape_succeeded(name, out, marker, world))


def test_planted_startup_files_never_run(world):
    """A sitecustomize/usercustomize/.pth written by one call is never imported by the next."""
    plant = "for f in ('sitecustomize.py', 'usercustomize.py', 'aios-adv.pth'):\n  open(f, 'w').write('print(\"PLANTED\")')"
    for hook in (True, False):
        run_sandboxed(plant, SandboxLimits(audit_hook=hook))
        out = run_sandboxed("import sys; print(sorted(m for m in sys.modules if 'custom' in m))", SandboxLimits(audit_hook=hook))
        record(f"planted-startup-hook-{hook}", world.harmed() + (["planted code ran"] if "PLANTED" in out["stdout"] + out["stderr"] or "custom" in out["stdout"].replace("[]", "") else []))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 3. Oversized arguments, the calculator, output and storage floods
# ---------------------------------------------------------------------------------------------
CALC_BOMBS = ["9**9**9**9", "factorial(10**9)", "(10**9999)**9999", "factorial(99999)", "2**10000**10000",
              "integrate(exp(x**x), x)", "x" * 500, "(" * 200 + "1" + ")" * 200]  # fmt: skip


@pytest.mark.parametrize("i", range(len(CALC_BOMBS)))
def test_calculator_cannot_freeze_the_kernel(world, i):
    """While the hostile expression is evaluated (or times out), another agent's syscalls are served."""
    k = world.kernel
    calc = k.modules["tools"].get("calculator").fn.__self__
    calc.timeout = 2  # the hostile call's bound; the property below does not depend on it
    hostile: dict = {}

    def attack():
        with aios.agent_context(k, "mallory"):
            try:
                hostile["out"] = aios.tool_call("calculator", {"expression": CALC_BOMBS[i]})
            except SyscallFailed as exc:
                hostile["err"] = exc.error.type
            hostile["done"] = time.monotonic()

    th = threading.Thread(target=attack)
    th.start()
    served_during = 0  # victim syscalls completed while the hostile expression was being evaluated
    with aios.agent_context(k, "victim"):
        while th.is_alive() and served_during < 20:
            aios.memory_usage()
            served_during += th.is_alive()
    th.join(60)
    bad = [] if not th.is_alive() and ("err" in hostile or len(repr(hostile.get("out"))) < 200_000) else ["unbounded"]
    if hostile.get("err") == "ToolTimeout" and served_during == 0:
        bad.append("the kernel served no one while the calculator worked")
    if "err" in hostile and not any(
        r["detail"].startswith(hostile["err"]) for r in k.modules["access"].audit_log(agent="mallory", outcome="failed")
    ):
        bad.append("the hostile call's failure left no audit record")
    record(f"calculator-bomb-{i}", world.harmed() + bad)


def test_calculator_serves_after_the_bombs(world):
    with aios.agent_context(world.kernel, "victim"):
        assert aios.tool_call("calculator", {"expression": "6*7"})["result"] == 42
    assert world.kernel.modules["tools"].get("calculator").fn.__self__.restarts >= 1  # bombs were killed


@pytest.mark.parametrize("what", ["code-too-long", "output-flood", "stderr-flood", "many-lines"])
def test_oversized_arguments_and_outputs(world, what):
    rss = _rss()
    code = {
        "code-too-long": "#" * 200_000,
        "output-flood": "import sys\nfor _ in range(400):\n  sys.stdout.write('x' * (1 << 20))",
        "stderr-flood": "import sys\nfor _ in range(400):\n  sys.stderr.write('y' * (1 << 20))",
        "many-lines": "for i in range(10**7): print(i)",
    }[what]
    out, err = None, None
    with aios.agent_context(world.kernel, "mallory"):
        try:
            out = aios.tool_call("python", {"code": code, "timeout": 10})["result"]
        except SyscallFailed as exc:
            err = exc.error.type
    bad = []
    if what == "code-too-long" and err != "InvalidToolArguments":
        bad.append(f"not refused: {err}")
    if out is not None and (len(out["stdout"]) > 65536 or len(out["stderr"]) > 65536 or not out["truncated"]):
        bad.append("output not capped")
    FIGURES[f"rss-growth-mb-{what}"] = (_rss() - rss) / 1024
    record(f"oversized-{what}", world.harmed() + bad)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_storage_and_queue_floods(world):
    k = world.kernel
    st = k.modules["storage"]
    quota = st.quota.max_bytes
    with aios.agent_context(k, "mallory"):
        refused = 0
        for i in range(12):
            try:
                aios.storage_put(f"flood{i}", "z" * 60_000)
            except SyscallFailed as exc:
                assert exc.error.type == "QuotaExceeded"
                refused += 1
    audited = [r for r in k.modules["access"].audit_log(agent="mallory", outcome="failed", limit=100_000)
               if r["detail"].startswith("QuotaExceeded")]  # fmt: skip
    record("storage-flood", world.harmed() + ([] if st.usage("mallory")[0] <= quota and refused else ["quota not enforced"])
           + ([] if len(audited) >= refused else ["refusals not audited"]))  # fmt: skip
    tm = k.modules["tools"]
    refused_before = tm.queue.refused
    gate, calls = threading.Event(), []

    def slow():
        """Holds its slot until released."""
        gate.wait(60)

    tm.register(slow, max_concurrency=1, groups=("user",), name="slow_flood")
    mallory = k.credential_for("mallory", by=k.owner)
    for _ in range(tm.queue.per_agent + 5):
        calls.append(k.submit(ToolSyscall(request={"op": "call", "name": "slow_flood"}), mallory))
    assert wait_until(lambda: sum(c.finished for c in calls) >= 4, 60)  # the ones past the per-agent limit
    refused = [c for c in calls if c.finished and c.error and c.error.type == "ToolBusy"]
    gate.set()
    for c in calls:
        c.wait(60) if not (c.error and c.error.type == "ToolBusy") else None
    record("tool-queue-flood", world.harmed() + ([] if refused and tm.queue.refused > refused_before else ["no per-agent limit"]))


# ---------------------------------------------------------------------------------------------
# 4. Starvation: nine sleeping python calls queued by one agent
# ---------------------------------------------------------------------------------------------
def test_queued_python_calls_do_not_starve_others(world):
    k = world.kernel
    tm = k.modules["tools"]
    slots = tm.get("python").max_concurrency
    victim = k.credential_for("victim", by=k.owner)
    hog = k.credential_for("hog", by=k.owner)

    def py(code, cred, timeout=10):
        return k.submit(ToolSyscall(request={"op": "call", "name": "python", "arguments": {"code": code, "timeout": timeout}}), cred)

    t0 = time.monotonic()
    py("print(1)", victim).wait(60)
    alone = time.monotonic() - t0
    hostile = [py("import time; time.sleep(0.5)", hog) for _ in range(9)]
    assert wait_until(lambda: tm.queue.waiting("tool:python", agent="hog") >= 9 - slots, 60)
    # the pool is not held by the queued calls: a memory syscall goes through at once
    mem = k.submit(MemorySyscall(request={"op": "usage"}), victim)
    mem.wait(60)
    hostile_done_at_mem = sum(h.finished for h in hostile)
    t0 = time.monotonic()
    mine = py("print(2)", victim)
    assert mine.wait(120)["result"]["stdout"] == "2\n"
    under_attack = time.monotonic() - t0
    unfinished = sum(not h.finished for h in hostile)
    for h in hostile:
        h.wait(120)
    FIGURES.update(python_alone_s=alone, python_under_9_queued_s=under_attack, hostile_unfinished_when_victim_done=unfinished)
    bad = []
    if hostile_done_at_mem > slots:
        bad.append("memory syscall waited for the hostile tool calls")
    if unfinished < 9 - 2 * slots:  # round robin: the victim waits for at most one hostile call per slot
        bad.append(f"victim waited for the backlog ({unfinished} hostile calls left)")
    record("starve-python-queue", world.harmed() + bad)


def test_slow_tool_without_limits_does_not_take_the_pool(world):
    """One agent's slow calls of a tool without limits hold at most its running slots, never the
    kernel's worker threads: the victim's tool call and memory syscall finish while all are pending."""
    k = world.kernel
    tm = k.modules["tools"]
    gate = threading.Event()

    def slow_fetch(url: str) -> str:
        """A tool without limits whose calls can be slow (the model picks the URL)."""
        gate.wait(60)
        return url

    tm.register(slow_fetch, groups=("user",))
    hog, victim = k.credential_for("hog2", by=k.owner), k.credential_for("victim", by=k.owner)
    n = k.config.workers + 4
    hostile = [k.submit(ToolSyscall(request={"op": "call", "name": "slow_fetch", "arguments": {"url": f"u{i}"}}), hog)
               for i in range(n)]  # fmt: skip
    assert wait_until(lambda: tm.queue.running("agent:hog2") == tm.queue.per_agent_running, 60)
    mine = k.submit(ToolSyscall(request={"op": "call", "name": "slow_fetch", "arguments": {"url": "v"}}), victim)
    gate_for_victim = wait_until(lambda: mine.scheduled_at is not None and tm.queue.running("agent:victim") == 1, 60)
    usage = k.submit(MemorySyscall(request={"op": "usage"}), victim).wait(60)
    pending = sum(not h.finished for h in hostile)
    running = tm.queue.running("agent:hog2")
    gate.set()
    assert mine.wait(60)["result"] == "v"
    for h in hostile:
        h.wait(60)
    FIGURES["slow_tool_hostile_pending_when_victim_served"] = pending
    bad = []
    if not gate_for_victim or usage is None:
        bad.append("the victim was not served")
    if pending != n or running > tm.queue.per_agent_running:
        bad.append(f"{pending} of {n} hostile calls pending, {running} running")
    record("starve-unlimited-tool", world.harmed() + bad)


def test_zz_summary(world):
    """The suite's count and its successes (printed; run with -s to see)."""
    successes = sorted(a for a, ok in RESULTS.items() if ok)
    print(f"\nadversarial attempts: {len(RESULTS)}, successes: {len(successes)} {successes}")
    print("starvation figures:", {k: round(v, 3) if isinstance(v, float) else v for k, v in FIGURES.items()})
    assert len(RESULTS) >= 100
    assert successes == []
