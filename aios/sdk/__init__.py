"""What agent code imports: syscall-style calls, the agent base class, concurrent runs.

The syscall functions are listed once, in ``aios.sdk.calls.__all__``; this package and the top-level
``aios`` package re-export that list rather than repeating it.
"""

from aios.sdk import calls
from aios.sdk.agent import Agent, run_all
from aios.sdk.calls import *  # noqa: F403 - the agent-facing syscall functions, see calls.__all__
from aios.sdk.runtime import (
    AgentContext,
    AgentRun,
    AgentSpec,
    ChatResult,
    ChatStream,
    agent_context,
    chat,
    chat_stream,
    current,
    run_agent,
    run_agents,
    use_context,
)

__all__ = [
    "Agent",
    "AgentContext",
    "AgentRun",
    "AgentSpec",
    "ChatResult",
    "ChatStream",
    "agent_context",
    "chat",
    "chat_stream",
    "current",
    "run_agent",
    "run_agents",
    "run_all",
    "use_context",
    *calls.__all__,
]
