"""aios: an operating-system kernel for LLM agents.

    import aios
    kernel = aios.Kernel(scheduler="rr", quantum=8)
    with aios.agent_context(kernel, "me"):
        print(aios.chat("Hello!").text)

    conn = aios.connect("http://127.0.0.1:8000", token)   # a kernel served by `aios serve`
    print(conn.chat("Hello!").text)
"""

from aios import sdk
from aios.kernel.kernel import Kernel, KernelConfig
from aios.kernel.syscall import (
    LLMRequest,
    LLMResponse,
    LLMSyscall,
    Message,
    Syscall,
    SyscallError,
    SyscallFailed,
    SyscallRejected,
    SyscallStatus,
    ToolCall,
)
from aios.sdk import *  # noqa: F403 - everything agent code calls, listed once in aios.sdk.__all__
from aios.service.client import Connection, connect

__version__ = "0.1.0"

__all__ = [
    "Connection",
    "Kernel",
    "KernelConfig",
    "LLMRequest",
    "LLMResponse",
    "LLMSyscall",
    "Message",
    "Syscall",
    "SyscallError",
    "SyscallFailed",
    "SyscallRejected",
    "SyscallStatus",
    "ToolCall",
    "connect",
    *sdk.__all__,
]
