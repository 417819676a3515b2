"""Storage manager: durable items, files, logs, chromadb index consistency, crash safety, server mode.

The hashing embedder is used where only plumbing matters; ``test_retrieval_minilm`` uses MiniLM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _mgr_util import make_kernel, minilm
from _util import free_port

import aios
from aios.kernel.storage import StorageManager
from aios.kernel.syscall import SyscallFailed


def test_items_roundtrip(kernel):
    with aios.agent_context(kernel, "alice"):
        assert aios.storage_put("notes/1", "first note", {"n": 1})["version"] == 1
        assert aios.storage_put("notes/1", "first note, edited")["version"] == 2
        aios.storage_put("notes/2", "second note")
        aios.storage_put("other", "unrelated text")
        assert aios.storage_get("notes/1")["content"] == "first note, edited"
        assert [i["key"] for i in aios.storage_list("notes/")] == ["notes/1", "notes/2"]
        assert aios.storage_search("second note", k=1)[0]["key"] == "notes/2"
        # a prefix scopes the search: the closest item overall ("other") is outside it
        scoped = aios.storage_search("unrelated text", k=3, prefix="notes/")
        assert sorted(i["key"] for i in scoped) == ["notes/1", "notes/2"]
        assert aios.storage_search("unrelated text", k=1)[0]["key"] == "other"
        assert aios.storage_search("anything", prefix="nothing-here/") == []
        assert aios.storage_delete("other") is True
        with pytest.raises(SyscallFailed) as ei:
            aios.storage_get("other")
        assert ei.value.error.type == "NotFound"
        assert kernel.modules["storage"].consistency()["consistent"]


def test_files_and_traversal(kernel):
    with aios.agent_context(kernel, "alice"):
        aios.file_write("docs/a.txt", "hello")
        aios.file_write("img.bin", b"\x00\xff")
        assert aios.file_read("docs/a.txt") == "hello"
        assert aios.file_read("img.bin", binary=True) == b"\x00\xff"
        assert [f["path"] for f in aios.file_list()] == ["docs/a.txt", "img.bin"]
        for bad in ["../x", "/etc/passwd", "docs/../../x", "a\\..\\b", "..", "./../x"]:
            with pytest.raises(SyscallFailed) as ei:
                aios.file_write(bad, "pwned")
            assert ei.value.error.type == "InvalidPath", bad
        with pytest.raises(SyscallFailed) as ei:
            aios.file_read("img.bin")  # not text: a clear error, nothing lost
        assert ei.value.error.type == "StorageError"
    root = kernel.modules["storage"].files_root
    assert not (root.parent / "x").exists() and not (root / "x").exists()


def test_interaction_log(kernel):
    with aios.agent_context(kernel, "alice"):
        aios.log_append("asked about the weather", event="user")
        aios.tool_call("current_time")
        events = [e["event"] for e in aios.log_read()]
        assert events == ["user", "tool_call"]


def test_reconcile_repairs_index(tmp_path):
    s = StorageManager(tmp_path / "d", embedder=aios.kernel.embedding.HashEmbedder())
    for i in range(5):
        s.put("a", f"k{i}", f"text {i}")
    col = s.index.open()
    col.delete(ids=[col.get()["ids"][0]])  # a row whose index entry was lost
    col.upsert(
        ids=["99999"], embeddings=[[0.1] * 64], metadatas=[{"agent": "a", "key": "ghost", "version": 1}]
    )
    with s.db.tx() as db:  # a row updated in SQLite but not re-indexed
        db.execute("UPDATE items SET version = version + 1 WHERE key = 'k3'")
    c = s.consistency()
    assert not c["consistent"] and c["missing"] and c["orphans"] == ["99999"] and c["stale"]
    assert all(r["key"] != "ghost" for r in s.search("a", "text", k=10))  # orphans never surface
    assert s.reconcile() == {"reindexed": 2, "orphans_dropped": 1}
    assert s.consistency()["consistent"]
    s.close()


WRITER = textwrap.dedent(
    """
    import sys, aios
    from aios.kernel.storage import StorageSyscall
    k = aios.Kernel(data_dir=sys.argv[1], embedder="hash")
    w = k.credential_for("w", by=k.owner)
    i = 0
    while True:
        k.syscall(StorageSyscall(request=dict(op="put", key=f"k{i}", content=f"value {i}")), w)
        if i % 3 == 0:  # some updates too, so versions matter
            k.syscall(StorageSyscall(request=dict(op="put", key=f"k{i}", content=f"value {i} v2")), w)
        print(i, flush=True)  # acknowledged
        i += 1
    """
)


def test_crash_safety_sigkill(tmp_path):
    data = tmp_path / "crash"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    acked = []
    deadline = time.monotonic() + 300  # hang guard only: 40 acknowledged writes take seconds
    while len(acked) < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    proc.send_signal(signal.SIGKILL)  # mid-stream: the writer is in its next put
    proc.wait()
    assert len(acked) >= 40, "writer did not get going"
    k = aios.Kernel(data_dir=data, embedder="hash")
    try:
        st = k.modules["storage"]
        for i in acked:
            expect = f"value {i} v2" if i % 3 == 0 else f"value {i}"
            assert st.get("w", f"k{i}")["content"] == expect
        c = st.consistency()
        assert c["consistent"], c
        assert c["rows"] >= len(acked)
    finally:
        k.shutdown()


def test_chroma_server_mode(tmp_path):
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(chroma).exists():
        pytest.skip("the `chroma` CLI is not installed")
    port = free_port()
    server = subprocess.Popen(
        [chroma, "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # hang guard only: the server starts in seconds
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("chroma server did not start")
        k = make_kernel(tmp_path, storage_url=f"http://127.0.0.1:{port}")
        try:
            with aios.agent_context(k, "alice"):
                aios.storage_put("a", "apples and pears")
                aios.storage_put("b", "trains and buses")
                assert aios.storage_search("pears", k=1)[0]["key"] == "a"
            st = k.modules["storage"]
            assert st.url is not None and st.index.client is not None
            assert st.consistency()["consistent"]
        finally:
            k.shutdown()
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:  # a slow exit under load is not the property under test
            server.kill()
            server.wait(60)


def test_retrieval_minilm(kernel):
    kernel.modules["storage"].embedder = minilm()
    with aios.agent_context(kernel, "alice"):
        aios.storage_put("pet", "Our dog Rex loves chasing tennis balls in the park.")
        aios.storage_put("tax", "The income tax return is due on April 15.")
        aios.storage_put("trip", "Hotel booked in Lisbon for the conference week.")
        assert aios.storage_search("puppy playing fetch", k=1)[0]["key"] == "pet"
    st = kernel.modules["storage"]
    assert st.retrieve("alice", "when must I file taxes", 1) == ["The income tax return is due on April 15."]
    assert st.retrieve("bob", "when must I file taxes", 3) == []  # retrieval stays in the caller's namespace


def test_llm_retrieval_uses_only_the_callers_items(tiny_kernel):
    k = tiny_kernel
    k.modules["storage"].embedder = aios.kernel.embedding.HashEmbedder()
    assert k._llm.retriever == k.modules["storage"].retrieve  # wired by the kernel's managers
    with aios.agent_context(k, "alice"):
        aios.storage_put("a1", "alice keeps the launch codes in the blue folder")
        aios.storage_put("a2", "alice's meeting is on friday")
        plain = aios.chat("where are the launch codes", max_new_tokens=2).response.prompt_tokens
        rag = aios.chat("where are the launch codes", max_new_tokens=2, retrieve_k=2).response.prompt_tokens
        assert rag > plain  # the items were placed in the context
    with aios.agent_context(k, "mallory"):
        plain = aios.chat("where are the launch codes", max_new_tokens=2).response.prompt_tokens
        rag = aios.chat("where are the launch codes", max_new_tokens=2, retrieve_k=5).response.prompt_tokens
        assert rag == plain  # nothing of alice's reaches mallory's prompt


def test_concurrent_puts_group_commit(tmp_path):
    import threading

    s = StorageManager(tmp_path / "g", embedder=aios.kernel.embedding.HashEmbedder())
    errors = []

    def writer(t: int) -> None:
        try:
            for j in range(10):
                assert s.put("a", f"k{j % 4}", f"writer {t} write {j}")["content"] == f"writer {t} write {j}"
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ths = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert errors == []
    assert sum(s.get("a", f"k{j}")["version"] for j in range(4)) == 160  # every write counted once
    assert s.consistency()["consistent"]
    s.close()


def test_lazily_built_llm_core_gets_the_retriever(tmp_path, monkeypatch):
    import aios.kernel.kernel as kernel_module

    class Core:  # stands in for the engine: only the hook matters here
        retriever = None

        def add(self, syscall): ...
        def step(self):
            return False

        def has_work(self):
            return False

        def close(self): ...

    monkeypatch.setattr(kernel_module, "build_llm_core", lambda config: Core())
    k = make_kernel(tmp_path)
    try:
        assert k.llm.retriever == k.modules["storage"].retrieve
    finally:
        k.shutdown()


def test_per_agent_quotas_on_bytes_and_objects(tmp_path):
    k = make_kernel(tmp_path, storage_quota_mb=4096 / (1 << 20), storage_quota_objects=3)  # 4 KiB, 3 objects
    try:
        st = k.modules["storage"]
        with aios.agent_context(k, "hog"):
            aios.storage_put("a", "x" * 1000)
            aios.file_write("f.txt", "y" * 1000)
            aios.storage_put("a", "z" * 1500)  # a replacement is charged the difference only
            with pytest.raises(SyscallFailed) as ei:
                aios.storage_put("b", "w" * 2000)  # bytes
            assert ei.value.error.type == "QuotaExceeded"
            aios.storage_put("b", "small")
            with pytest.raises(SyscallFailed) as ei:
                aios.file_write("g.txt", "1")  # objects: a, f.txt, b
            assert ei.value.error.type == "QuotaExceeded"
            with pytest.raises(SyscallFailed) as ei:
                aios.log_append("L" * 3000)  # logs count against the bytes
            assert ei.value.error.type == "QuotaExceeded"
            aios.storage_delete("b")
            aios.file_write("g.txt", "1")  # room again after a delete
        used_bytes, objects = st.usage("hog")
        assert objects == 3 and used_bytes <= 4096
        assert {i["key"] for i in st.list("hog")} == {"a"} and st.get("hog", "a")["content"] == "z" * 1500
        assert {f["path"] for f in st.file_list("hog")} == {"f.txt", "g.txt"}
        with aios.agent_context(k, "other"):  # quotas are per agent
            aios.storage_put("a", "x" * 3000)
        assert st.usage("other")[1] == 1
    finally:
        k.shutdown()
