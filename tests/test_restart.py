"""Generations that survive a kernel restart, even a ``SIGKILL`` (``KernelConfig.state_dir``).

A child process runs a kernel with a state directory on the tiny model: it submits a mix of LLM
syscalls (greedy, sampling with and without a seed, beam search, choices, stop strings) from several
agents and prints each acknowledged syscall id, also storage writes and memory items (a small
memory budget, so items are evicted to storage) with their acknowledgements. Its engine is held
until everything is submitted, then ``SIGKILL``s its own process at the start of engine step N:
a deterministic point in the run, not a timer. N varies: before anything ran, mid-run with
suspended and running generations, near the end.

Then this process starts a kernel on the same directories and checks, for every acknowledged id:
the syscall finishes (collected by id, as a client would) with exactly the tokens of the same
request run alone and uninterrupted (for an unseeded sampling request, with the seed the original
run drew, which the journal kept); every acknowledged storage write reads back; every acknowledged
memory item that had been evicted is in storage; every acknowledged syscall is in the audit log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aios.kernel.syscall import LLMRequest, LLMSyscall, SyscallStatus

TESTS = Path(__file__).resolve().parent

REQUESTS = [
    ("ann", {"max_new_tokens": 40}),
    ("bob", {"max_new_tokens": 36, "temperature": 0.9, "top_p": 0.9, "seed": 7}),
    ("cid", {"max_new_tokens": 30, "temperature": 1.1, "top_k": 40}),  # no seed: the kernel draws one
    ("dee", {"max_new_tokens": 24, "num_beams": 2}),
    ("eve", {"max_new_tokens": 12, "choices": ["north", "south", "east west"]}),
    ("fay", {"max_new_tokens": 44, "stop": [" robin"]}),
    ("gus", {"max_new_tokens": 38, "temperature": 0.7}),
    ("ann", {"max_new_tokens": 20, "temperature": 0.8, "seed": 99}),
]


def prompt(i: int) -> str:
    words = "the kernel schedules agents weather Paris tools memory round robin priority".split()
    return " ".join(words[(i * 3 + j) % len(words)] for j in range(5 + i))


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import build_tiny_model, build_tiny_tokenizer
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig
    from aios.kernel.memory import AddMemory, MemorySyscall
    from aios.kernel.storage import PutItem, StorageSyscall
    from aios.kernel.syscall import LLMRequest, LLMSyscall

    root, kill_at = sys.argv[1], int(sys.argv[2])
    requests = json.loads(sys.argv[3])
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    cfg = KernelConfig(model="tiny", scheduler="rr", quantum=3, max_batch_size=4, embedder="hash",
                       memory_budget_mb=0.002, data_dir=root + "/data", state_dir=root + "/state")
    engine = LLMEngine(model, tok, cfg)
    engine.scheduler.max_rows = 3  # fewer rows than requests: generations get suspended
    go, steps = threading.Event(), [0]
    real_step = engine.step

    def step():
        go.wait()
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step()

    engine.step = step
    k = Kernel(cfg, llm=engine)
    cred = {{}}
    def me(name):
        if name not in cred:
            cred[name] = k.credential_for(name, by=k.owner)
        return cred[name]
    def say(*parts):
        print(json.dumps(parts), flush=True)

    for i, (agent, extra) in enumerate(requests):
        sc = LLMSyscall(request=LLMRequest(messages=[{{"role": "user", "content": extra.pop("prompt")}}], **extra))
        k.submit(sc, me(agent))
        say("llm", sc.id, agent)  # acknowledged: submit returned
    for j in range(6):
        sc = k.submit(StorageSyscall(request=PutItem(key=f"k{{j}}", content=f"value {{j}}")), me("ann"))
        sc.wait(60)
        say("put", sc.id, f"k{{j}}")
        sc = k.submit(MemorySyscall(request=AddMemory(content=f"note {{j}} " + "m" * 600)), me("bob"))
        item = sc.wait(60)
        say("mem", sc.id, item["id"])
    say("swapped", sorted(k.modules["storage"].swap_sizes("bob")))
    go.set()
    for sc in k.history(kind="llm"):
        sc.wait(600)
    say("finished", steps[0])
    """
)


def run_child(root: Path, kill_at: int) -> list[list]:
    reqs = [dict(extra, prompt=prompt(i)) for i, (_, extra) in enumerate(REQUESTS)]
    payload = json.dumps([[agent, r] for (agent, _), r in zip(REQUESTS, reqs, strict=True)])
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS)), str(root), str(kill_at), payload],
        capture_output=True,
        text=True,
        timeout=600,  # hang guard
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("[")]
    return proc.returncode, lines, proc.stderr


@pytest.fixture(scope="module")
def reference(tiny_lm):
    """Each request alone, uninterrupted, on a fresh engine (FIFO, same batch width)."""
    from aios.kernel.engine import LLMEngine

    model, tok = tiny_lm
    cache: dict = {}

    def ref(i: int, seed: int | None):
        if (i, seed) not in cache:
            extra = dict(REQUESTS[i][1])
            if seed is not None:
                extra["seed"] = seed
            eng = LLMEngine(model, tok, scheduler="fifo", max_batch_size=4)
            sc = LLMSyscall(
                agent=REQUESTS[i][0],
                request=LLMRequest(messages=[{"role": "user", "content": prompt(i)}], **extra),
            )
            eng.add(sc)
            eng.run_until_idle()
            assert sc.status is SyscallStatus.DONE, sc.error
            cache[(i, seed)] = sc.result
            eng.close()
        return cache[(i, seed)]

    return ref


@pytest.mark.parametrize("kill_at", [1, 30, 60])  # of ~95 steps in all (margin for engine changes)
def test_sigkill_then_restart_finishes_every_acknowledged_generation_exactly(
    tiny_lm, reference, tmp_path, kill_at
):
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig

    rc, lines, err = run_child(tmp_path, kill_at)
    assert rc == -signal.SIGKILL, f"the child was not killed at step {kill_at} (rc {rc}): {err[-2000:]}"
    llm = [(x[1], x[2]) for x in lines if x[0] == "llm"]
    puts = [(x[1], x[2]) for x in lines if x[0] == "put"]
    mems = [(x[1], x[2]) for x in lines if x[0] == "mem"]
    swapped = next(x[1] for x in lines if x[0] == "swapped")
    assert len(llm) == len(REQUESTS) and len(puts) == 6 and len(mems) == 6 and swapped  # all acknowledged

    model, tok = tiny_lm
    cfg = KernelConfig(
        model="tiny", scheduler="rr", quantum=3, max_batch_size=4, embedder="hash", memory_budget_mb=0.002,
        data_dir=tmp_path / "data", state_dir=tmp_path / "state",
    )  # fmt: skip
    counts = None
    with Kernel(cfg, llm=LLMEngine(model, tok, cfg)) as k:
        recovered = set(k.journal.recovered)
        for i, (sid, agent) in enumerate(llm):
            got = k.collect(sid, k.credential_for(agent, by=k.owner), timeout=300)
            seed = got.seed if REQUESTS[i][1].get("temperature", 0) > 0 else None
            want = reference(i, seed)
            assert got.token_ids == want.token_ids, f"{sid} ({agent}, request {i}) differs after the restart"
            assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
        counts = k.journal.counts()
        st = k.modules["storage"]
        for _, key in puts:
            assert st.get("ann", key)["content"] == f"value {key[1:]}"
        assert set(swapped) <= set(st.swap_sizes("bob"))  # evicted (acknowledged) memory is in storage
        audited = {r["syscall"] for r in k.modules["access"].audit_log(limit=100_000)}
        assert {sid for sid, _ in puts + mems} <= audited
    assert counts == {"done": len(REQUESTS)}
    if kill_at == 1:  # killed before the engine ran a step: every generation was resumed
        assert recovered == {sid for sid, _ in llm}
    else:
        assert recovered  # some were unfinished when it died (a step count well inside the run)
