"""The syscall base and the kernel's routing: life cycle, timings, waiting, rejection, isolation."""

import asyncio
import threading
from typing import ClassVar

import pytest
from pydantic import BaseModel, ValidationError

import aios
from aios.kernel.syscall import LLMRequest, Syscall, SyscallFailed, SyscallRejected, SyscallStatus


class EchoRequest(BaseModel):
    text: str


class EchoSyscall(Syscall):
    kind: ClassVar[str] = "echo"
    request: EchoRequest


def test_life_cycle_and_derived_times():
    sc = Syscall(agent="a")
    assert sc.status is SyscallStatus.QUEUED and sc.waiting_time is None and sc.turnaround_time is None
    sc.mark_running()
    first = sc.scheduled_at
    sc.mark_suspended()
    sc.mark_running()
    assert sc.scheduled_at == first, "first-scheduled time is kept across suspensions"
    sc.complete("ok")
    assert sc.status is SyscallStatus.DONE and sc.wait(0) == "ok"
    # derived from the recorded timestamps, never stored twice (no sleep: the host clock is not the property)
    assert sc.created_at <= sc.scheduled_at <= sc.finished_at
    assert sc.waiting_time == sc.scheduled_at - sc.created_at
    assert sc.turnaround_time == sc.finished_at - sc.created_at
    sc.fail("Late", "ignored after completion")
    assert sc.status is SyscallStatus.DONE, "a finished syscall never changes again"


def test_failure_is_typed_and_raised_on_wait():
    sc = Syscall(agent="a")
    sc.fail("ToolTimeout", "took too long")
    with pytest.raises(SyscallFailed) as err:
        sc.wait(0)
    assert err.value.error.type == "ToolTimeout" and "took too long" in str(err.value)


def test_wait_times_out_while_pending():
    with pytest.raises(TimeoutError):
        Syscall(agent="a").wait(0.01)


def test_asyncio_await_and_gather():
    async def main():
        a, b = Syscall(agent="x"), Syscall(agent="y")
        threading.Timer(0.02, lambda: (a.complete(1), b.complete(2))).start()
        return await asyncio.gather(a, b)

    assert asyncio.run(main()) == [1, 2]


def test_malformed_llm_requests_are_rejected_at_construction():
    for bad in (
        {"messages": []},
        {"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 0},
        {"messages": [{"role": "user", "content": "hi"}], "num_beams": 2, "temperature": 0.7},
        {"messages": [{"role": "user", "content": "hi"}], "stop": [""]},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}], "unknown_field": 1},
    ):
        with pytest.raises(ValidationError):
            LLMRequest(**bad)


def cred(kernel, name):
    """A credential for ``name`` issued on the kernel owner's authority."""
    return kernel.credential_for(name, by=kernel.owner)


def test_kernel_routes_to_registered_handlers_and_isolates_failures():
    with aios.Kernel() as kernel:
        kernel.register("echo", lambda sc: sc.request.text.upper() if sc.request.text != "boom" else 1 / 0)
        ok = kernel.submit(EchoSyscall(agent="a", request=EchoRequest(text="hi")), cred(kernel, "a"))
        bad = kernel.submit(EchoSyscall(request=EchoRequest(text="boom")), cred(kernel, "b"))
        assert bad.agent == "b"  # stamped from the credential
        assert ok.wait(5) == "HI"
        with pytest.raises(SyscallFailed) as err:
            bad.wait(5)
        assert err.value.error.type == "ZeroDivisionError"
        # the kernel keeps serving after a handler crashed
        assert kernel.syscall(EchoSyscall(request=EchoRequest(text="again")), cred(kernel, "a"), 5) == "AGAIN"
        assert kernel.metrics()["agents"]["a"]["syscalls"] == 2


def test_kernel_rejects_unknown_kinds_non_syscalls_and_use_after_shutdown():
    kernel = aios.Kernel()
    a = cred(kernel, "a")
    with pytest.raises(SyscallRejected, match="no module serves 'echo'"):
        kernel.submit(EchoSyscall(request=EchoRequest(text="x")), a)
    with pytest.raises(SyscallRejected, match="expected a Syscall"):
        kernel.submit({"agent": "a"}, a)
    kernel.shutdown()
    kernel.register("echo", lambda sc: None)
    with pytest.raises(SyscallRejected, match="shut down"):
        kernel.submit(EchoSyscall(request=EchoRequest(text="x")), a)


def test_two_kernels_share_no_state():
    with aios.Kernel() as k1, aios.Kernel() as k2:
        k1.register("echo", lambda sc: "one")
        k2.register("echo", lambda sc: "two")
        assert k1.syscall(EchoSyscall(request=EchoRequest(text="")), cred(k1, "a"), 5) == "one"
        assert k2.syscall(EchoSyscall(request=EchoRequest(text="")), cred(k2, "a"), 5) == "two"
        with pytest.raises(SyscallRejected):  # a credential is good only at the kernel that issued it
            k2.submit(EchoSyscall(request=EchoRequest(text="")), cred(k1, "a"))
        assert len(k1.history()) == len(k2.history()) == 1
