"""The service's pieces that need no server: the wire models, timestamps across the wire, and the
incremental detokenizer behind every stream (in process and over HTTP)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

import aios
from aios.kernel.detokenize import Detokenizer
from aios.kernel.memory import MemorySyscall
from aios.kernel.syscall import LLMSyscall, SyscallFailed, SyscallStatus
from aios.service.wire import CALL_ADAPTER, SYSCALL_CLASSES, SyscallOut, call_of


def test_every_kind_the_kernel_serves_travels(tiny_kernel):
    served = set(tiny_kernel._handlers) | {LLMSyscall.kind}
    assert {c.kind for c in SYSCALL_CLASSES} == served


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "memory", "agent": "alice", "request": {"op": "usage"}},  # who is asking: the token says
        {"kind": "memory", "request": {"op": "usage"}, "status": "done"},  # bookkeeping is the kernel's
        {"kind": "memory", "request": {"op": "usage", "group": "admin"}},
        {"kind": "memory", "request": {"op": "frobnicate"}},
        {"kind": "nosuch", "request": {}},
        {"kind": "llm", "request": {"messages": []}},
    ],
)
def test_bodies_that_do_not_validate(body):
    with pytest.raises(ValidationError):
        CALL_ADAPTER.validate_python(body)


def test_a_call_round_trips_and_keeps_the_kernels_times(tiny_kernel):
    local = MemorySyscall(request={"op": "add", "content": "x"})
    call = CALL_ADAPTER.validate_python(call_of(local))
    remote = call.build()  # what the server submits: a fresh object, no agent yet
    assert remote.agent is None and remote.request == local.request
    tiny_kernel.submit(remote, tiny_kernel.credential_for("alice", by=tiny_kernel.owner)).wait(60)
    SyscallOut.model_validate_json(SyscallOut.of(remote).model_dump_json()).apply_to(local)
    assert (local.id, local.agent, local.status) == (remote.id, "alice", SyscallStatus.DONE)
    assert (local.created_at, local.scheduled_at, local.finished_at) == (
        remote.created_at, remote.scheduled_at, remote.finished_at)  # fmt: skip
    assert local.waiting_time == remote.waiting_time and local.result == remote.result


def test_a_failed_call_raises_the_same_typed_error(tiny_kernel):
    local = MemorySyscall(request={"op": "get", "id": "nope"})
    remote = CALL_ADAPTER.validate_python(call_of(local)).build()
    tiny_kernel.submit(remote, tiny_kernel.credential_for("bob", by=tiny_kernel.owner))
    with pytest.raises(SyscallFailed) as theirs:
        remote.wait(60)
    SyscallOut.of(remote).apply_to(local)
    with pytest.raises(SyscallFailed) as ours:
        local.wait(0)
    assert ours.value.error == theirs.value.error


@pytest.mark.parametrize("stop", [None, ["the"], ["ab", "Paris"]])
def test_detokenizer_deltas_add_up_to_the_text(tiny_lm, stop):
    _, tok = tiny_lm
    rng = random.Random(7)
    for _ in range(100):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
        detok = Detokenizer(tok, stop)
        streamed, final = "", tok.decode(ids, skip_special_tokens=True)
        for i in ids:
            streamed += detok.push(i)
            assert final.startswith(streamed)  # never a character that is not in the text
            for s in stop or []:
                assert s not in streamed  # nothing from a stop string on is ever shown early
        if stop:
            cuts = [final.find(s) for s in stop if s in final]
            final = final[: min(cuts)] if cuts else final
        assert streamed + detok.finish(final) == final


def test_chat_stream_in_process_equals_chat(tiny_kernel):
    with aios.agent_context(tiny_kernel, "streamer"):
        whole = aios.chat("hello there", max_new_tokens=24)
        stream = aios.chat_stream("hello there", max_new_tokens=24)
        deltas = list(stream)
        assert len(deltas) > 1 and "".join(deltas) == whole.text
        assert stream.result.text == whole.text and stream.result.syscall_id != whole.syscall_id
