"""What agent code imports: syscall-style calls, the agent base class, concurrent runs."""

from aios.sdk.agent import Agent, run_all
from aios.sdk.runtime import (
    AgentContext,
    AgentRun,
    AgentSpec,
    ChatResult,
    agent_context,
    chat,
    current,
    run_agent,
    run_agents,
)

__all__ = [
    "Agent",
    "AgentContext",
    "AgentRun",
    "AgentSpec",
    "ChatResult",
    "agent_context",
    "chat",
    "current",
    "run_agent",
    "run_agents",
    "run_all",
]
