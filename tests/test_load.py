"""Load: 100 agents x 20 mixed syscalls (memory, storage, files, tools, small LLM calls).

No deadlock (the whole run has a hang guard far above its expected time), no lost result (every
syscall finishes DONE and every answer is checked), bounded memory from the memory manager's own
counters (resident agent memory sampled throughout the run never exceeds the budget; everything is
released at the end). Process RSS is not asserted here: it depends on what earlier tests in the
same process allocated; the soak benchmark (benchmarks/bench_soak.py) tracks it in its own process.
Hashing embedder: this measures the kernel, not the embedding model.
"""

from __future__ import annotations

import threading
import time

import aios
from aios.kernel.embedding import HashEmbedder
from aios.kernel.syscall import SyscallStatus
from aios.sdk.calls import release_on_exit

AGENTS, CALLS = 100, 20


def agent_body(i: int):
    name = aios.current().agent
    ids = [aios.memory_add(f"{name} fact {j}: " + "x" * 200, {"j": j})["id"] for j in range(4)]  # 4
    assert aios.memory_get(ids[0])["metadata"] == {"j": 0}  # 5
    aios.memory_update(ids[1], content=f"{name} fact 1 updated")  # 6
    assert aios.memory_get(ids[1])["content"].endswith("updated")  # 7
    assert len(aios.memory_search(f"{name} fact", k=3)) == 3  # 8
    for j in range(3):  # 11
        aios.storage_put(f"doc{j}", f"{name} document {j}")
    assert aios.storage_get("doc2")["content"] == f"{name} document 2"  # 12
    assert aios.storage_get("doc0")["content"] == f"{name} document 0"  # 13
    assert aios.storage_search("document", k=2)  # 14
    assert aios.tool_call("calculator", {"expression": f"{i} * 3 + 1"})["result"] == i * 3 + 1  # 15
    assert aios.tool_call("calculator", {"expression": f"1/{i + 2}"})["result"] == f"1/{i + 2}"  # 16
    aios.tool_call("current_time")  # 17
    aios.file_write("out.txt", f"result {i}")  # 18
    texts = [aios.chat(f"agent {i} says hello {j}", max_new_tokens=4).text for j in range(2)]  # 20
    return {"i": i, "texts": texts}


def st_swap_empty(k) -> bool:
    return all(not k.modules["storage"].swap_sizes(f"agent{i:03d}") for i in range(AGENTS))


def test_100_agents_mixed(tiny_kernel):
    k = tiny_kernel
    k.modules["storage"].embedder = HashEmbedder()
    mm = k.modules["memory"]
    mm.budget_bytes = 64 * 1024  # small, so eviction to storage happens under load
    specs = [  # each agent frees its memory when it exits, as Agent.spec arranges
        aios.AgentSpec(name=f"agent{i:03d}", fn=agent_body, task=i, exits=[release_on_exit])
        for i in range(AGENTS)
    ]
    box: dict = {}
    t0 = time.monotonic()
    runner = threading.Thread(target=lambda: box.update(runs=aios.run_agents(k, specs)), daemon=True)
    runner.start()
    peak_resident = 0
    while runner.is_alive():  # sample the manager's counter while the agents run (usage() takes its lock)
        peak_resident = max(peak_resident, mm.usage()["resident_bytes"])
        runner.join(timeout=0.05)
        if time.monotonic() - t0 > 540:  # hang guard: the run takes well under a minute
            break
    assert not runner.is_alive(), "deadlock: the load run did not finish"
    assert peak_resident <= mm.budget_bytes  # (that memory was used at all: evictions > 0 below)
    runs = box["runs"]
    assert [r.error for r in runs if not r.ok] == []
    assert [r.output["i"] for r in runs] == list(range(AGENTS))
    assert all(len(r.output["texts"]) == 2 for r in runs)
    done = [s for s in k.history() if s.agent.startswith("agent")]
    assert len(done) == AGENTS * (CALLS + 1)  # + the release at exit
    assert all(s.status is SyscallStatus.DONE for s in done)
    u = mm.usage()
    assert u["evictions"] > 0 and u["resident_items"] == 0 and u["resident_bytes"] == 0  # all released
    assert st_swap_empty(k)
    st = k.modules["storage"]
    assert st.consistency()["consistent"]
    assert len(st.file_list("agent050")) == 1
