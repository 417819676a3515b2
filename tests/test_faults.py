"""Fault injection in the LLM core: each test breaks one thing and checks what survives.

- a batched decode that raises: a fault tied to one request's rows fails that request alone (typed);
  a transient one fails nobody; every survivor's tokens equal its clean, uninterrupted run;
- NaN logits from a corrupted KV slot: that request fails with ``NumericalError``; the others are exact;
- spilled KV files truncated, bit-flipped or deleted: the checksum or the reader detects it and the
  generation is recomputed from its tokens, exactly (never resumed from garbage);
- the spill directory full (a 1 MiB tmpfs, as root): spills that do not fit are dropped and recomputed
  on resume; every output is exact and no partial file is left behind;
- an agent that dies with syscalls in flight: they are cancelled, their rows and snapshots freed,
  other agents finish exactly.

The faults are injected by wrapping the runner's forward (a test double of a failing forward: a real
one cannot be made to fail on demand) or by writing to the real cache and the real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest
import torch
from _util import wait_until

import aios
from aios.kernel.syscall import LLMRequest, LLMSyscall, SyscallStatus

WORDS = "the kernel schedules agents weather Paris tools memory round robin priority".split()


def call(i: int, mode: str = "greedy", n: int = 14) -> LLMSyscall:
    extra: dict = {}
    if mode == "sampling":
        extra = {"temperature": 0.9, "top_p": 0.95, "seed": 500 + i}
    elif mode == "beam":
        extra = {"num_beams": 2}
    prompt = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 + (i * 5) % 11))
    return LLMSyscall(
        agent=f"agent{i}",
        request=LLMRequest(messages=[{"role": "user", "content": prompt}], max_new_tokens=n + i % 4, **extra),
    )


MIX = ["greedy", "sampling", "beam", "greedy", "sampling", "greedy"]


@pytest.fixture(scope="module")
def clean(tiny_lm):
    """Each request of MIX alone, uninterrupted: the tokens every survivor must reproduce."""
    from aios.kernel.engine import LLMEngine

    model, tok = tiny_lm
    out = {}
    for i, mode in enumerate(MIX):
        eng = LLMEngine(model, tok, scheduler="fifo", max_batch_size=8)
        c = call(i, mode)
        eng.add(c)
        eng.run_until_idle()
        assert c.status is SyscallStatus.DONE, c.error
        out[i] = c.result.token_ids
        eng.close()
    return out


def start(eng, rows: int | None = None) -> list[LLMSyscall]:
    if rows is not None:
        eng.scheduler.max_rows = rows  # fewer rows than requests: suspensions happen too
    calls = [call(i, mode) for i, mode in enumerate(MIX)]
    for c in calls:
        eng.add(c)
    return calls


def assert_clean_engine(eng) -> None:
    """Nothing leaked: every slot free, no snapshot held in memory or on disk, nothing queued."""
    assert not eng.has_work()
    assert sorted(eng.runner.free_slots) == list(range(eng.runner.max_rows))
    kv = eng.stats()["kv"]
    assert kv["bytes_in_memory"] == 0 and kv["bytes_on_disk"] == 0


def seq_of(eng, syscall):
    return next((s for s in eng.scheduler.running + eng.scheduler.ready if s.syscall is syscall), None)


def test_decode_fault_in_one_request_fails_only_it(make_engine, clean):
    eng = make_engine(scheduler="rr", quantum=2, max_batch_size=8)
    calls = start(eng, rows=5)
    victim = calls[3]
    real = eng.runner.run
    raised = []

    def faulty(chunks):
        s = seq_of(eng, victim)
        if s is not None and s.tokens_generated >= 3 and {c.slot for c in chunks} & set(s.slots):
            raised.append(len(chunks))
            raise RuntimeError("injected: this request's input breaks the forward")
        return real(chunks)

    eng.runner.run = faulty
    eng.run_until_idle()
    assert raised and max(raised) > 1  # it hit a batched forward with others in it
    assert victim.status is SyscallStatus.FAILED and victim.error.type == "EngineError"
    for i, c in enumerate(calls):
        if c is not victim:
            assert c.status is SyscallStatus.DONE, (i, c.error)
            assert c.result.token_ids == clean[i], f"agent{i} changed after a neighbour's fault"
    assert sum(c.result.preemptions for c in calls if c.result) > 0
    assert_clean_engine(eng)


def test_transient_decode_fault_fails_nobody(make_engine, clean):
    eng = make_engine(scheduler="rr", quantum=3, max_batch_size=8)
    calls = start(eng)
    real = eng.runner.run
    n = [0]

    def flaky(chunks):
        if len(chunks) >= 4:  # batched forwards (a retry runs one request's 1-2 rows)
            n[0] += 1
            if n[0] in (3, 7):  # two of them fail, once each
                raise RuntimeError("injected transient failure")
        return real(chunks)

    eng.runner.run = flaky
    eng.run_until_idle()
    assert n[0] > 7
    for i, c in enumerate(calls):
        assert c.status is SyscallStatus.DONE, (i, c.error)
        assert c.result.token_ids == clean[i]
    assert_clean_engine(eng)


def test_nan_from_a_corrupted_kv_slot_fails_only_that_request(make_engine, clean):
    eng = make_engine(scheduler="rr", quantum=2, max_batch_size=8)
    calls = start(eng, rows=6)
    victim = calls[1]  # a sampling request: NaN probabilities would otherwise raise or pick junk
    poisoned = False
    while eng.has_work():
        eng.step()
        s = seq_of(eng, victim)
        if not poisoned and s is not None and s.slots and s.tokens_generated >= 2:
            with torch.inference_mode():
                eng.runner.cache.keys[0][s.slots[0], :, : s.kv_len] = float("nan")
            poisoned = True
    assert poisoned
    assert victim.status is SyscallStatus.FAILED and victim.error.type == "NumericalError"
    for i, c in enumerate(calls):
        if c is not victim:
            assert c.status is SyscallStatus.DONE, (i, c.error)
            assert c.result.token_ids == clean[i]
    assert_clean_engine(eng)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_spilled_kv_is_detected_and_recomputed(make_engine, clean, tmp_path, damage):
    spill = tmp_path / "spill"
    eng = make_engine(scheduler="rr", quantum=2, max_batch_size=8, kv_memory_budget_mb=0, spill_dir=spill)
    calls = start(eng, rows=3)
    damaged: set[str] = set()
    while eng.has_work():
        eng.step()
        for f in sorted(spill.glob("*.safetensors")):
            if f.name in damaged:
                continue
            damaged.add(f.name)
            data = f.read_bytes()
            if damage == "truncate":
                f.write_bytes(data[: len(data) * 2 // 3])
            elif damage == "flip":  # flip bytes in the tensor data (the file's tail), header intact
                b = bytearray(data)
                for k in range(1, 40, 7):
                    b[-k] ^= 0x5A
                f.write_bytes(bytes(b))
            else:
                f.unlink()
    kv = eng.stats()["kv"]
    assert kv["spills"] > 0 and kv["lost"] == len(damaged) > 0  # every damaged file was caught
    assert kv["restores"] == 0  # nothing was resumed from a damaged file
    for i, c in enumerate(calls):
        assert c.status is SyscallStatus.DONE, (i, c.error)
        assert c.result.token_ids == clean[i], f"agent{i} diverged after recompute"
    assert any("KV recomputed" in a for c in calls for a in c.result.context_actions)
    assert_clean_engine(eng)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount); mostly filled, so spills soon hit ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024 - 48 * 1024))  # leave ~48 KiB
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_spill_dir_full_recomputes_exactly(make_engine, clean, tiny_tmpfs):
    spill = tiny_tmpfs / "kv"
    eng = make_engine(scheduler="rr", quantum=2, max_batch_size=8, kv_memory_budget_mb=0, spill_dir=spill)
    calls = start(eng, rows=2)
    eng.run_until_idle()
    kv = eng.stats()["kv"]
    assert kv["spill_failures"] > 0  # the disk did fill up
    assert kv["spills"] > kv["spill_failures"]  # and some spills fitted before it did
    for i, c in enumerate(calls):
        assert c.status is SyscallStatus.DONE, (i, c.error)
        assert c.result.token_ids == clean[i]
    assert list(spill.iterdir()) == []  # no partial files left on the full disk
    assert_clean_engine(eng)


def test_agent_dying_with_syscalls_in_flight(tiny_kernel, clean):
    """An agent submits three long generations without waiting, then crashes while the engine holds
    them: they are cancelled and their rows and snapshots freed, while another agent's request,
    running alongside, finishes exactly."""
    k = tiny_kernel
    eng = k.llm
    submitted: list[LLMSyscall] = []
    holding = threading.Event()

    def doomed(_):
        ctx = aios.current()
        for j in range(3):
            sc = LLMSyscall(
                agent=ctx.agent,
                request=LLMRequest(
                    messages=[{"role": "user", "content": f"long story {j}"}], max_new_tokens=400
                ),
            )
            submitted.append(ctx.kernel.submit(sc, ctx.credential))
        # die only once the engine has scheduled all three (they hold rows or snapshots)
        assert wait_until(lambda: all(sc.scheduled_at is not None for sc in submitted))
        holding.set()
        raise RuntimeError("agent crashed")

    def survivor(_):
        holding.wait(120)
        ctx = aios.current()
        return ctx.kernel.submit(call(0, "greedy"), ctx.credential).wait(120)

    runs = aios.run_agents(k, [aios.AgentSpec("doomed", doomed), aios.AgentSpec("agent0", survivor)])
    assert not runs[0].ok and "agent crashed" in runs[0].error
    assert runs[1].ok and runs[1].output.token_ids == clean[0]
    assert [sc.error.type for sc in submitted] == ["Cancelled"] * 3
    assert all(sc.result is None for sc in submitted)
    assert wait_until(lambda: not eng.has_work())  # the engine thread stepped past them
    assert_clean_engine(eng)
    assert eng.stats()["failed"] == 3 and eng.stats()["completed"] == 1
