"""Identity the kernel issues: tokens stored hashed, revocation, audited failures, credentials that
only the kernel can make, and the in-process rule (agent code holds only its own context).

Each check reads the kernel's own records (the ``agents`` and ``audit`` tables, the victim's
memory) rather than trusting the absence of an exception.
"""

from __future__ import annotations

import sqlite3

import pytest
from _mgr_util import TinyCore, admin, make_kernel

import aios
from aios.kernel.identity import AuthenticationFailed, Credential, CredentialRejected
from aios.kernel.memory import MemorySyscall
from aios.kernel.syscall import LLMRequest, LLMSyscall, SyscallFailed, SyscallRejected


def _audit_denied(kernel, action="authenticate"):
    return [r for r in kernel.modules["access"].audit_log(limit=100_000) if r["action"] == action and r["outcome"] == "denied"]


def test_tokens_are_stored_hashed_and_authenticate(kernel, tmp_path):
    token = kernel.identities.add("alice", "user")
    assert token.startswith("aios_") and len(token) > 40
    cred = kernel.identities.authenticate(token)
    assert (cred.agent, cred.group) == ("alice", "user")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("audit.db*"))
    assert token.encode() not in raw  # never in clear, in the database or its WAL
    row = sqlite3.connect(tmp_path / "data" / "audit.db").execute(
        "SELECT token_hash FROM agents WHERE name = 'alice'"
    ).fetchone()
    assert row[0] and len(row[0]) == 64 and token not in row[0]
    info = {a.name: a for a in kernel.identities.list()}["alice"]
    assert info.group == "user" and not info.revoked and info.has_token
    assert "token" not in info.model_dump()
    with aios.agent_context(kernel, cred):
        assert aios.whoami() == {"agent": "alice", "group": "user"}


@pytest.mark.parametrize("bad", ["", "aios_wrong", "x" * 5000, None, 42])
def test_bad_tokens_fail_and_are_audited(kernel, bad):
    kernel.identities.add("alice")
    before = len(_audit_denied(kernel))
    with pytest.raises(AuthenticationFailed):
        kernel.identities.authenticate(bad)
    assert len(_audit_denied(kernel)) == before + 1


def test_revocation_stops_tokens_and_credentials_at_once(kernel, tmp_path):
    token = kernel.identities.add("alice")
    cred = kernel.identities.authenticate(token)
    spawned = kernel.credential_for("alice", by=kernel.owner)
    kernel.submit(MemorySyscall(request=dict(op="add", content="x")), cred).wait(120)  # hang guard
    kernel.identities.revoke("alice")
    with pytest.raises(AuthenticationFailed):
        kernel.identities.authenticate(token)
    for c in (cred, spawned):
        with pytest.raises(CredentialRejected, match="revoked"):
            kernel.submit(MemorySyscall(request=dict(op="add", content="y")), c)
    with pytest.raises(AuthenticationFailed):
        kernel.credential_for("alice", by=kernel.owner)
    # rotation gives a new token; the old token and old credentials stay dead
    new = kernel.identities.add("alice", rotate=True)
    assert kernel.identities.authenticate(new).agent == "alice"
    with pytest.raises(AuthenticationFailed):
        kernel.identities.authenticate(token)
    with pytest.raises(CredentialRejected):
        kernel.submit(MemorySyscall(request=dict(op="add", content="z")), cred)
    assert kernel.modules["memory"].usage("alice")["items"] == 1
    assert len(_audit_denied(kernel)) >= 5
    # durable: a new kernel on the same directory knows the new token and not the old one
    kernel.shutdown()
    k2 = make_kernel(tmp_path)
    try:
        assert k2.identities.authenticate(new).agent == "alice"
        with pytest.raises(AuthenticationFailed):
            k2.identities.authenticate(token)
    finally:
        k2.shutdown()


def test_expired_tokens_and_credentials_are_refused(kernel):
    live = kernel.identities.add("long", ttl_s=3600)
    assert kernel.identities.authenticate(live).agent == "long"
    token = kernel.identities.add("brief", ttl_s=1e-6)  # expired by the time it is presented
    before = len(_audit_denied(kernel))
    with pytest.raises(AuthenticationFailed):
        kernel.identities.authenticate(token)
    with pytest.raises(AuthenticationFailed):
        kernel.credential_for("brief", by=kernel.owner)
    assert len(_audit_denied(kernel)) == before + 1
    info = {a.name: a for a in kernel.identities.list()}
    assert info["brief"].expires_at is not None and info["long"].expires_at > info["brief"].expires_at
    fresh = kernel.identities.add("brief", rotate=True)  # rotation without a ttl: no expiry
    assert kernel.identities.authenticate(fresh).agent == "brief"


def test_adding_twice_is_an_error_unless_rotated(kernel):
    kernel.identities.add("alice")
    with pytest.raises(ValueError, match="exists"):
        kernel.identities.add("alice")
    with pytest.raises(ValueError):
        kernel.identities.add("kernel", "admin")  # the owner's name is reserved
    with pytest.raises(ValueError):
        kernel.identities.add("bad\nname")


def test_forged_missing_foreign_and_replayed_credentials_are_refused(kernel, tmp_path):
    victim = kernel.credential_for("alice", by=kernel.owner)
    kernel.submit(MemorySyscall(request=dict(op="add", content="alice's")), victim).wait(120)  # hang guard
    other = make_kernel(tmp_path / "other")
    try:
        attempts = [
            None,
            Credential("alice", "user"),  # built by hand, equal fields
            Credential("kernel", "admin"),
            other.credential_for("alice", by=other.owner),  # issued by another kernel
            "alice",
        ]
        for cred in attempts:
            with pytest.raises(SyscallRejected):
                kernel.submit(MemorySyscall(request=dict(op="list")), cred)
        with pytest.raises(CredentialRejected):
            kernel.credential_for("mallory", "admin", by=Credential("kernel", "admin"))
    finally:
        other.shutdown()
    mallory = kernel.credential_for("mallory", by=kernel.owner)
    with pytest.raises(CredentialRejected, match="names agent 'alice'"):
        kernel.submit(MemorySyscall(agent="alice", request=dict(op="list")), mallory)
    sc = kernel.submit(MemorySyscall(request=dict(op="add", content="once")), mallory)
    sc.wait(120)  # hang guard
    with pytest.raises(CredentialRejected, match="submitted already"):
        kernel.submit(sc, mallory)
    with pytest.raises(CredentialRejected):  # a user cannot spawn agents
        kernel.credential_for("alice", by=mallory)
    assert kernel.modules["memory"].usage("mallory")["items"] == 1
    assert [m["content"] for m in kernel.modules["memory"].list("alice")] == ["alice's"]
    assert len(_audit_denied(kernel)) >= 9


def test_agent_code_holds_only_its_own_context(kernel):
    with aios.agent_context(kernel, "alice"):
        aios.memory_add("alice's secret")
    bob_cred = kernel.credential_for("bob", by=kernel.owner)  # the owner's, leaked into mallory's reach
    with aios.agent_context(kernel, "mallory"):
        me = aios.current().credential
        with pytest.raises(PermissionError):
            with aios.agent_context(kernel, "alice"):
                pass
        with pytest.raises(PermissionError):
            kernel.owner  # noqa: B018 - the attribute access is the attack
        with pytest.raises(CredentialRejected):
            kernel.submit(MemorySyscall(agent="alice", request=dict(op="list")), me)
        with pytest.raises(CredentialRejected):  # someone else's credential, even a valid one
            kernel.submit(MemorySyscall(request=dict(op="list")), bob_cred)
        with pytest.raises(CredentialRejected):
            kernel.credential_for("alice", by=me)
        with pytest.raises(PermissionError):
            with aios.agent_context(kernel, bob_cred):
                pass
        assert aios.memory_list() == []
    assert [m["content"] for m in kernel.modules["memory"].list("alice")] == ["alice's secret"]
    assert kernel.modules["memory"].usage("bob")["items"] == 0


def test_admin_syscalls_manage_agents(kernel):
    root = admin(kernel)
    with aios.agent_context(kernel, root):
        out = aios.agent_add("svc", "guest")
        assert out["name"] == "svc" and out["group"] == "guest" and out["token"].startswith("aios_")
        names = {a["name"]: a for a in aios.agent_list()}
        assert names["svc"]["group"] == "guest" and "token" not in names["svc"]
    assert kernel.identities.authenticate(out["token"]).group == "guest"
    with aios.agent_context(kernel, "mallory"):
        for fn in (lambda: aios.agent_add("evil", "admin"), aios.agent_list, lambda: aios.agent_revoke("svc")):
            with pytest.raises(SyscallFailed) as ei:
                fn()
            assert ei.value.error.type == "PermissionDenied"
    assert "evil" not in {a.name for a in kernel.identities.list()}
    with aios.agent_context(kernel, root):
        assert aios.agent_revoke("svc") is True
    with pytest.raises(AuthenticationFailed):
        kernel.identities.authenticate(out["token"])


def test_access_queries_answer_only_about_the_caller(kernel):
    with aios.agent_context(kernel, "alice"):
        aios.storage_put("k", "v")
        aios.grant("storage", "k", "read", to="bob")
    with aios.agent_context(kernel, "mallory"):
        from aios.sdk.calls import _access

        with pytest.raises(SyscallFailed) as ei:
            _access(op="check", kind="storage", owner="alice", name="k", operation="read", grantee="bob")
        assert ei.value.error.type == "PermissionDenied"
        assert _access(op="check", kind="storage", owner="alice", name="k", operation="read") is False
        assert aios.grants() == []


def test_llm_syscalls_go_through_the_access_hook(tmp_path):
    core = TinyCore()
    k = make_kernel(tmp_path, llm=core)
    try:
        with aios.agent_context(k, "alice"):
            r = aios.chat("hello", max_new_tokens=2, retrieve_k=3)
        rows = [x for x in k.modules["access"].audit_log(agent="alice") if x["syscall"] == r.syscall_id]
        assert [(x["resource"], x["operation"], x["outcome"]) for x in rows] == [("storage:alice/*", "read", "allowed")]
        # a syscall cannot name someone else's retrieval namespace: the kernel stamps the agent
        mallory = k.credential_for("mallory", by=k.owner)
        req = LLMRequest(messages=[{"role": "user", "content": "x"}], retrieve_k=3)
        with pytest.raises(CredentialRejected):
            k.submit(LLMSyscall(agent="alice", request=req), mallory)
        assert core.served == 1
    finally:
        k.shutdown()
