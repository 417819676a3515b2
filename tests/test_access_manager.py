"""Access manager: groups, grants, revokes, the append-only audit log, and an adversarial suite.

Hashing embedder (no semantics needed: the point is that nothing of alice's ever comes back).
"""

from __future__ import annotations

import sqlite3

import pytest
from _mgr_util import admin, make_kernel

import aios
from aios.kernel.storage_files import agent_dirname
from aios.kernel.syscall import SyscallFailed

SECRET = "SECRET-7f3a"


def test_grants_revokes_and_audit(kernel):
    root = admin(kernel)
    with aios.agent_context(kernel, "alice"):
        aios.storage_put("plan", "the plan")
        aios.grant("storage", "*", "read", to="bob")
        assert {"resource": "storage:alice/*", "operation": "read", "grantee": "bob"} in aios.grants()
    with aios.agent_context(kernel, "bob"):
        assert aios.storage_get("plan", owner="alice")["content"] == "the plan"
        assert aios.storage_search("plan", owner="alice")[0]["key"] == "plan"
        with pytest.raises(SyscallFailed):
            aios.storage_put("plan", "bob's plan", owner="alice")  # read-only grant
        with pytest.raises(SyscallFailed) as ei:
            aios.revoke("storage", "*", "read", frm="bob", owner="alice")  # not the owner
        assert ei.value.error.type == "PermissionDenied"
        with pytest.raises(SyscallFailed) as ei:
            aios.audit_log()
        assert ei.value.error.type == "PermissionDenied"
    with aios.agent_context(kernel, root):  # admins may revoke anything and read the log
        aios.revoke("storage", "*", "read", frm="bob", owner="alice")
        log = aios.audit_log()
        actions = {(r["agent"], r["action"], r["outcome"]) for r in log}
        assert {
            ("alice", "grant", "allowed"),
            ("bob", "revoke", "denied"),
            (root, "revoke", "allowed"),
        } <= actions
        assert ("bob", "audit", "denied") in actions
        assert all({"time", "agent", "resource", "operation", "outcome"} <= set(r) for r in log)
        assert aios.audit_log(agent="bob", outcome="denied")
    with aios.agent_context(kernel, "bob"), pytest.raises(SyscallFailed):
        aios.storage_get("plan", owner="alice")


def test_audit_is_append_only_and_durable(tmp_path):
    k = make_kernel(tmp_path)
    with aios.agent_context(k, "alice"):
        aios.memory_add("x")
    db = k.modules["access"]._db
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET outcome = 'allowed'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")
    n = len(k.modules["access"].audit_log())
    k.shutdown()
    k2 = make_kernel(tmp_path)
    try:
        assert len(k2.modules["access"].audit_log()) >= n > 0
    finally:
        k2.shutdown()


def test_groups_cannot_be_self_assigned(kernel):
    with aios.agent_context(kernel, "mallory"):
        assert aios.whoami()["group"] == "user"
        with pytest.raises(SyscallFailed):
            aios.set_group("mallory", "admin")
        with pytest.raises(PermissionError):  # re-entering with a group claim needs the owner's capability
            with aios.agent_context(kernel, "mallory", group="admin"):
                pass
        assert aios.whoami()["group"] == "user"
    admin(kernel)
    with aios.agent_context(kernel, "root"):
        assert aios.set_group("helper", "guest") is True
    assert kernel.modules["access"].group("helper") == "guest"


def _victim(kernel, n=8):
    with aios.agent_context(kernel, "alice"):
        mem = [aios.memory_add(f"{SECRET} memory {i}")["id"] for i in range(n)]
        keys = [f"s{i}" for i in range(n)]
        for key in keys:
            aios.storage_put(key, f"{SECRET} stored {key}")
        files = ["f1.txt", "dir/f2.txt"]
        for f in files:
            aios.file_write(f, f"{SECRET} file {f}")
        aios.log_append(f"{SECRET} log")
    return mem, keys, files


def _snapshot(kernel):
    st, mm = kernel.modules["storage"], kernel.modules["memory"]
    return (
        sorted((m["id"], m["content"], str(m["metadata"])) for m in mm.list("alice", 1000)),
        sorted((i["key"], st.get("alice", i["key"])["content"]) for i in st.list("alice", "", 1000)),
        sorted((f["path"], st.file_read("alice", f["path"])) for f in st.file_list("alice")),
        st.log_read("alice"),
        kernel.modules["access"].grants("alice"),
        kernel.modules["access"].group("mallory"),
    )


def _host_state(kernel):
    """alice's state read from the host, not through the kernel: the bytes of every file under the
    test's directory outside mallory's own (so a file planted next to the data directory counts too),
    and her rows in the storage database through a separate read-only connection."""
    st = kernel.modules["storage"]
    data = st.files_root.parent
    mallory = st.files_root / agent_dirname("mallory")
    skip = {mallory, data / "chroma"}  # mallory's own files; the index (checked through the kernel)
    files = sorted(
        (str(p.relative_to(data.parent)), p.read_bytes())
        for p in data.parent.rglob("*")
        if p.is_file() and not skip & set(p.parents) and not p.name.endswith((".db", ".db-wal", ".db-shm"))
    )
    db = sqlite3.connect(f"file:{data / 'storage.db'}?mode=ro", uri=True)
    try:
        rows = sorted(db.execute("SELECT key, content, metadata FROM items WHERE agent = 'alice'").fetchall())
        frows = sorted(db.execute("SELECT path, size, sha256 FROM files WHERE agent = 'alice'").fetchall())
    finally:
        db.close()
    return files, rows, frows


def test_adversarial_suite(kernel):
    mem, keys, files = _victim(kernel)
    before = _snapshot(kernel)
    adir = agent_dirname("alice")
    root = kernel.modules["storage"].files_root
    a: list = []  # (label, callable, is_write)
    A = aios
    # 1. memory, naming alice's namespace directly
    for i in mem:
        a += [(f"mem get {i}", lambda i=i: A.memory_get(i, owner="alice"), False)]
        a += [(f"mem update {i}", lambda i=i: A.memory_update(i, content="pwned", owner="alice"), True)]
        a += [(f"mem delete {i}", lambda i=i: A.memory_delete(i, owner="alice"), True)]
        # 2. alice's item ids in mallory's own namespace
        a += [(f"mem get own-ns {i}", lambda i=i: A.memory_get(i), False)]
        a += [(f"mem update own-ns {i}", lambda i=i: A.memory_update(i, metadata={"x": 1}), True)]
        a += [(f"mem delete own-ns {i}", lambda i=i: A.memory_delete(i), True)]
    for q in [SECRET, "memory 3", "stored", "file"]:
        a += [(f"mem search {q}", lambda q=q: A.memory_search(q, k=50, owner="alice"), False)]
        a += [(f"mem search own {q}", lambda q=q: A.memory_search(q, k=50), False)]
    a += [("mem list", lambda: A.memory_list(owner="alice"), False)]
    a += [("mem add", lambda: A.memory_add("planted", owner="alice"), True)]
    from aios.kernel.memory import MemorySyscall

    def raw_mem(**req):
        ctx = aios.current()
        return ctx.call(MemorySyscall(agent=ctx.agent, request=req))

    a += [("mem release alice", lambda: raw_mem(op="release", owner="alice"), True)]
    a += [("mem persist alice", lambda: raw_mem(op="persist", owner="alice"), True)]
    a += [("mem usage alice", lambda: raw_mem(op="usage", owner="alice"), False)]
    # 3. look-alike namespaces are other namespaces, not alice's and not mallory's
    for ns in ["alice ", "ALICE", "alice/..", "../alice", "alice\x00", "*"]:
        a += [(f"mem list {ns!r}", lambda ns=ns: A.memory_list(owner=ns), False)]
        a += [(f"storage list {ns!r}", lambda ns=ns: A.storage_list(owner=ns), False)]
        a += [(f"mem get {ns!r}", lambda ns=ns: A.memory_get(mem[0], owner=ns), False)]
    # 4. storage, naming alice's namespace
    for key in keys:
        a += [(f"st get {key}", lambda k=key: A.storage_get(k, owner="alice"), False)]
        a += [(f"st put {key}", lambda k=key: A.storage_put(k, "pwned", owner="alice"), True)]
        a += [(f"st delete {key}", lambda k=key: A.storage_delete(k, owner="alice"), True)]
        # 5. crafted keys in mallory's own namespace
        for crafted in [key, f"../alice/{key}", f"alice/{key}", f"alice:{key}", f"storage:alice/{key}"]:
            a += [(f"st get crafted {crafted}", lambda c=crafted: A.storage_get(c), False)]
    for q in [SECRET, "stored s1", "alice"]:
        a += [(f"st search alice {q}", lambda q=q: A.storage_search(q, k=50, owner="alice"), False)]
        a += [(f"st search own {q}", lambda q=q: A.storage_search(q, k=50), False)]
        a += [
            (
                f"tool storage_search {q}",
                lambda q=q: A.tool_call("storage_search", {"query": q, "k": 20}),
                False,
            )
        ]
    a += [("st list", lambda: A.storage_list(owner="alice"), False)]
    a += [("log read", lambda: A.log_read(owner="alice"), False)]
    # 6. files: alice's namespace, then path traversal from mallory's own
    for f in files:
        a += [(f"file read {f}", lambda f=f: A.file_read(f, owner="alice"), False)]
        a += [(f"file write {f}", lambda f=f: A.file_write(f, "pwned", owner="alice"), True)]
        a += [(f"file delete {f}", lambda f=f: A.file_delete(f, owner="alice"), True)]
    a += [("file list", lambda: A.file_list(owner="alice"), False)]
    paths = [
        f"../{adir}/f1.txt",
        f"../../files/{adir}/f1.txt",
        str(root / adir / "f1.txt"),
        f"dir/../../{adir}/f1.txt",
        f"./../{adir}/dir/f2.txt",
        f"..\\{adir}\\f1.txt",
        f"%2e%2e/{adir}/f1.txt",
        f"{adir}/f1.txt",
        "..",
        f"..//{adir}/f1.txt",
    ]
    for p in paths:
        a += [(f"file read {p}", lambda p=p: A.file_read(p), False)]
        a += [(f"file write {p}", lambda p=p: A.file_write(p, "pwned"), True)]
        a += [(f"tool file_read {p}", lambda p=p: A.tool_call("file_read", {"path": p}), False)]
        a += [
            (
                f"tool file_write {p}",
                lambda p=p: A.tool_call("file_write", {"path": p, "content": "pwned"}),
                True,
            )
        ]
    alice_file = root / adir / "f1.txt"
    for code in [
        f"print(open({str(alice_file)!r}).read())",
        f"import os; print(os.listdir({str(root)!r}))",
        f"import pathlib; print(pathlib.Path({str(alice_file)!r}).read_text())",
        f"open({str(alice_file)!r}, 'w').write('pwned')",
        "import sqlite3; print(sqlite3.connect('"
        + str(root.parent / "storage.db")
        + "').execute('select * from items').fetchall())",
    ]:
        a += [(f"python {code[:30]}", lambda c=code: A.tool_call("python", {"code": c}), False)]
    # 7. access: self-grants, revokes, escalation, audit
    for kind, name in [
        ("memory", "*"),
        ("memory", mem[0]),
        ("storage", "*"),
        ("storage", keys[0]),
        ("file", "*"),
        ("log", "*"),
    ]:
        for op in ("read", "write"):
            a += [
                (
                    f"grant {kind}:{name} {op}",
                    lambda k=kind, n=name, o=op: A.grant(k, n, o, to="mallory", owner="alice"),
                    True,
                )
            ]
    a += [("revoke", lambda: A.revoke("storage", "*", "read", frm="bob", owner="alice"), True)]
    a += [("set_group", lambda: A.set_group("mallory", "admin"), True)]
    a += [("audit", lambda: A.audit_log(), False)]
    a += [("grant python", lambda: A.grant("tool", "python", "execute", to="mallory"), True)]

    host_before = _host_state(kernel)
    host_files, host_rows, host_frows = host_before  # the host check sees alice's data (not vacuous)
    assert sum(SECRET.encode() in b for _, b in host_files) == len(files) == len(host_frows)
    assert len(host_rows) == len(keys)
    successes = []
    with aios.agent_context(kernel, "mallory"):
        for label, fn, _is_write in a:  # reads and writes alike: the victim is checked after each
            try:
                out = fn()
            except SyscallFailed as exc:
                out = exc  # a refusal is not proof of a block: the victim is checked all the same
            # a read succeeds if alice's data comes back; a write if alice's state changed, seen by the
            # kernel or on the host (a write that lands in mallory's own namespace, e.g. a file
            # literally named '%2e%2e/...', is not). Checked after every attempt, refused or not.
            leaked = SECRET in repr(out)
            if leaked or _snapshot(kernel) != before or _host_state(kernel) != host_before:
                successes.append((label, out))
    assert len(a) >= 200, len(a)
    assert successes == []
    assert _snapshot(kernel) == before  # nothing of alice's changed
    assert _host_state(kernel) == host_before
    # every attempt reached the kernel and is in the audit log, with its syscall id
    ids = {s.id for s in kernel.history(agent="mallory")}
    assert len(ids) >= len(a)
    logged = {r["syscall"] for r in kernel.modules["access"].audit_log(agent="mallory", limit=100_000)}
    assert ids <= logged
    assert len(kernel.modules["access"].audit_log(agent="mallory", outcome="denied", limit=100_000)) >= 100


def test_retrieval_for_llm_is_namespace_scoped(kernel):
    _victim(kernel)
    st = kernel.modules["storage"]
    assert all(SECRET not in s for s in st.retrieve("mallory", SECRET, 50))
    assert any(SECRET in s for s in st.retrieve("alice", SECRET, 5))
