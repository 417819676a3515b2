"""Memory manager: CRUD, search, quota, eviction to storage and back, release/persist on exit.

Uses the hashing embedder (plumbing, not semantics) except ``test_semantic_search_minilm``.
"""

from __future__ import annotations

import pytest
from _mgr_util import make_kernel, minilm

import aios
from aios.kernel.syscall import SyscallFailed


@pytest.fixture
def kernel(tmp_path):
    k = make_kernel(tmp_path, memory_quota_kb=8, memory_budget_mb=2 / 1024)  # 2 KiB resident budget
    yield k
    k.shutdown()


def test_crud_list_search(kernel):
    with aios.agent_context(kernel, "alice"):
        a = aios.memory_add("the meeting is on tuesday", {"topic": "work"})
        b = aios.memory_add("buy oat milk and bread", {"topic": "shopping"})
        assert aios.memory_get(a["id"])["content"] == "the meeting is on tuesday"
        up = aios.memory_update(a["id"], content="the meeting moved to wednesday", metadata={"prio": 1})
        assert up["metadata"] == {"topic": "work", "prio": 1}
        assert [m["id"] for m in aios.memory_list()] == [a["id"], b["id"]]
        hits = aios.memory_search("milk bread", k=1)
        assert hits[0]["id"] == b["id"] and "score" in hits[0]
        assert aios.memory_delete(b["id"]) is True
        with pytest.raises(SyscallFailed) as ei:
            aios.memory_get(b["id"])
        assert ei.value.error.type == "NotFound"
        assert aios.memory_usage()["items"] == 1


def test_bad_input_is_a_clear_error(kernel):
    with aios.agent_context(kernel, "alice"):
        with pytest.raises(ValueError):
            aios.memory_update("x")  # neither content nor metadata
        with pytest.raises(SyscallFailed) as ei:
            aios.memory_update("nope", content="x")
        assert ei.value.error.type == "NotFound"
        assert aios.memory_add("still works")["content"] == "still works"


def test_quota(kernel):
    with aios.agent_context(kernel, "alice"):
        aios.memory_add("x" * 6000)
        with pytest.raises(SyscallFailed) as ei:
            aios.memory_add("y" * 4000)
        assert ei.value.error.type == "QuotaExceeded"
    with aios.agent_context(kernel, "bob"):  # quotas are per agent
        aios.memory_add("y" * 4000)


def test_eviction_to_storage_and_back(kernel):
    mm = kernel.modules["memory"]
    ids = []
    with aios.agent_context(kernel, "alice"):
        for i in range(10):
            ids.append(aios.memory_add(f"note {i} " + "z" * 500)["id"])
        u = mm.usage()
        assert u["resident_bytes"] <= u["budget_bytes"] and u["evictions"] > 0
        # evicted items are in storage, not dropped: every one comes back, unchanged
        assert len(kernel.modules["storage"].swap_sizes("alice")) > 0
        for i, item_id in enumerate(ids):
            assert aios.memory_get(item_id)["content"].startswith(f"note {i} ")
        assert mm.usage()["swap_ins"] > 0
        assert len(aios.memory_list()) == 10
        assert aios.memory_search("note 0", k=10)[0]["content"].startswith("note")
        assert mm.usage()["resident_bytes"] <= mm.budget_bytes


def test_released_on_exit_unless_persisted(tmp_path):
    class Forgetful(aios.Agent):
        def run(self, task):
            return self.memory_add("ephemeral")["id"]

    class Keeper(aios.Agent):
        def run(self, task):
            if task == "recall":
                return [m["content"] for m in self.memory_list()]
            aios.memory_persist()
            return self.memory_add("kept across runs")["id"]

    k = make_kernel(tmp_path)
    try:
        assert Forgetful("f").start(k).ok
        assert k.modules["memory"].usage("f")["items"] == 0
        assert Keeper("keep").start(k).ok
        assert k.modules["memory"].usage()["resident_items"] == 0  # written to storage at exit
        assert Keeper("keep").start(k, "recall").output == ["kept across runs"]
    finally:
        k.shutdown()
    k2 = make_kernel(tmp_path)  # persisted memory survives a kernel restart
    try:
        assert Keeper("keep").start(k2, "recall").output == ["kept across runs"]
    finally:
        k2.shutdown()


def test_other_agents_need_a_grant(kernel):
    with aios.agent_context(kernel, "alice"):
        item = aios.memory_add("alice's secret")
    with aios.agent_context(kernel, "bob"):
        for fn in (
            lambda: aios.memory_get(item["id"], owner="alice"),
            lambda: aios.memory_list(owner="alice"),
        ):
            with pytest.raises(SyscallFailed) as ei:
                fn()
            assert ei.value.error.type == "PermissionDenied"
        with pytest.raises(SyscallFailed) as ei:  # the id alone does not reach alice's namespace
            aios.memory_get(item["id"])
        assert ei.value.error.type == "NotFound"
    with aios.agent_context(kernel, "alice"):
        aios.grant("memory", item["id"], "read", to="bob")
    with aios.agent_context(kernel, "bob"):
        assert aios.memory_get(item["id"], owner="alice")["content"] == "alice's secret"
        with pytest.raises(SyscallFailed):
            aios.memory_delete(item["id"], owner="alice")  # read only
    with aios.agent_context(kernel, "alice"):
        aios.revoke("memory", item["id"], "read", frm="bob")
    with aios.agent_context(kernel, "bob"), pytest.raises(SyscallFailed):
        aios.memory_get(item["id"], owner="alice")


def test_semantic_search_minilm(tmp_path):
    k = make_kernel(tmp_path)
    k.modules["storage"].embedder = minilm()
    try:
        with aios.agent_context(k, "alice"):
            for text in [
                "my cat likes to sleep on the sofa",
                "the quarterly revenue grew 12%",
                "flight to Tokyo at 9am",
            ]:
                aios.memory_add(text)
            assert aios.memory_search("kitten napping", k=1)[0]["content"].startswith("my cat")
            assert aios.memory_search("airplane departure", k=1)[0]["content"].startswith("flight")
    finally:
        k.shutdown()
