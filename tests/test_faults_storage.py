"""Storage faults from outside the kernel: a real second process, a real chromadb server.

- SQLite locked by another process: a write waits for the lock and lands once it is released; held
  past the busy timeout, the write fails ``StorageBusy`` having written nothing, and the next write
  succeeds. (Reads are not checked during the wait: the storage manager serialises its SQLite use
  under one lock, so a waiting writer also holds up its readers for up to the busy timeout.)
- The chromadb server killed (SIGKILL) mid-run and started again on the same path and port: writes
  during the outage are acknowledged (SQLite is the source of truth) and readable, searches fail
  ``IndexUnavailable``; once the server is back the kernel (not restarted) reconciles the index by
  itself and every acknowledged item is searchable again, with no orphan and nothing stale.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _mgr_util import make_kernel
from _util import free_port, wait_until

import aios
from aios.kernel.syscall import SyscallFailed, SyscallStatus

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    print("released", flush=True)
    """
)


def lock_db(path: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def unlock(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "released"
    p.wait(30)


def test_sqlite_locked_by_another_process(tmp_path):
    from aios.kernel.storage import PutItem, StorageSyscall

    k = make_kernel(tmp_path)
    try:
        st = k.modules["storage"]
        with aios.agent_context(k, "alice") as ctx:
            aios.storage_put("before", "written before the lock")
            # 1. held briefly: the write waits, reads go on, the write lands after the release
            locker = lock_db(st.data_dir / "storage.db")
            put = k.submit(StorageSyscall(request=PutItem(key="during", content="x")), ctx.credential)
            assert wait_until(lambda: put.status is not SyscallStatus.QUEUED)
            assert not put.finished  # it cannot commit while the other process holds the lock
            unlock(locker)
            assert put.wait(60)["key"] == "during"
            assert aios.storage_get("during")["content"] == "x"
            # 2. held past the busy timeout: a typed failure, nothing written, the next write works
            st.db.conn.execute("PRAGMA busy_timeout=200")
            locker = lock_db(st.data_dir / "storage.db")
            try:
                with pytest.raises(SyscallFailed) as ei:
                    aios.storage_put("blocked", "never written")
                assert ei.value.error.type == "StorageBusy"
            finally:
                unlock(locker)
            with pytest.raises(SyscallFailed) as ei:
                aios.storage_get("blocked")
            assert ei.value.error.type == "NotFound"
            aios.storage_put("after", "written after")
            assert aios.storage_search("written after", k=1)[0]["key"] == "after"
        assert st.consistency()["consistent"]
    finally:
        k.shutdown()


def _chroma(path: Path, port: int) -> subprocess.Popen:
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(exe).exists():
        pytest.skip("the `chroma` CLI is not installed")
    p = subprocess.Popen(
        [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return p.poll() is not None  # exited: stop waiting, the caller sees it

    assert wait_until(up, 300) and p.poll() is None, "chroma server did not start"
    return p


def test_chroma_server_killed_and_restarted_mid_run(tmp_path):
    port = free_port()
    server = _chroma(tmp_path / "srv", port)
    k = make_kernel(tmp_path, storage_url=f"http://127.0.0.1:{port}")
    try:
        st = k.modules["storage"]
        with aios.agent_context(k, "alice"):
            aios.storage_put("a", "apples and pears")
            aios.storage_put("b", "trains and buses")
            assert aios.storage_search("pears", k=1)[0]["key"] == "a"
            server.kill()  # SIGKILL mid-run
            server.wait(30)
            aios.storage_put("c", "cherries in the rain")  # acknowledged: it is in SQLite
            aios.storage_put("a", "apples, pears and plums")  # an update the index misses
            aios.storage_delete("b")  # a delete the index misses
            assert aios.storage_get("c")["content"] == "cherries in the rain"
            with pytest.raises(SyscallFailed) as ei:
                aios.storage_search("cherries", k=1)
            assert ei.value.error.type == "IndexUnavailable"
            server = _chroma(tmp_path / "srv", port)  # same data, same port
            hits = aios.storage_search("cherries rain", k=3)  # the kernel reconciles by itself
            assert hits[0]["key"] == "c" and {h["key"] for h in hits} == {"a", "c"}
            assert aios.storage_search("plums", k=1)[0]["content"] == "apples, pears and plums"
        c = st.consistency()
        assert c["consistent"] and c["rows"] == 2, c
    finally:
        k.shutdown()
        server.kill()
        server.wait(30)
