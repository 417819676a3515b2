"""aios: an operating-system kernel for LLM agents.

    import aios
    kernel = aios.Kernel(scheduler="rr", quantum=8)
    with aios.agent_context(kernel, "me"):
        print(aios.chat("Hello!").text)
"""

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
from aios.sdk import (
    Agent,
    AgentContext,
    AgentRun,
    AgentSpec,
    ChatResult,
    agent_context,
    chat,
    current,
    run_agent,
    run_agents,
    run_all,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentContext",
    "AgentRun",
    "AgentSpec",
    "ChatResult",
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
    "agent_context",
    "chat",
    "current",
    "run_agent",
    "run_agents",
    "run_all",
]
