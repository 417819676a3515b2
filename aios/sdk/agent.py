"""The agent base class: subclass it, write ``run(task)``, call syscalls through ``self``."""

from __future__ import annotations

from typing import Any, ClassVar

from aios.kernel.kernel import Kernel
from aios.sdk.runtime import AgentRun, AgentSpec, ChatResult, chat, current, run_agent, run_agents


class Agent:
    """Base class for agents. An agent is a name plus a ``run(task)`` method that makes syscalls.

    The same instance can be run on any kernel; while it runs, ``self.ctx`` is its kernel context.
    """

    description: ClassVar[str] = ""
    group: ClassVar[str] = "user"

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()

    def run(self, task: Any) -> Any:  # pragma: no cover - subclasses implement it
        raise NotImplementedError

    # -- syscalls ---------------------------------------------------------------------------------
    @property
    def ctx(self):
        return current()

    def chat(self, messages, **request: Any) -> ChatResult:
        return chat(messages, **request)

    # -- running ----------------------------------------------------------------------------------
    def spec(self, task: Any = None) -> AgentSpec:
        return AgentSpec(name=self.name, fn=self.run, task=task, group=self.group)

    def start(self, kernel: Kernel, task: Any = None) -> AgentRun:
        """Run this agent on ``kernel`` in the calling thread."""
        return run_agent(kernel, self.spec(task))


def run_all(kernel: Kernel, agents_and_tasks: list[tuple[Agent, Any]]) -> list[AgentRun]:
    """Run several agents concurrently on one kernel."""
    return run_agents(kernel, [a.spec(t) for a, t in agents_and_tasks])
