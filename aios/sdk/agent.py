"""The agent base class: subclass it, write ``run(task)``, call syscalls through ``self``."""

from __future__ import annotations

from typing import Any, ClassVar

from aios.kernel.kernel import Kernel
from aios.sdk import calls
from aios.sdk.runtime import (
    AgentRun,
    AgentSpec,
    ChatResult,
    ChatStream,
    chat,
    chat_stream,
    current,
    run_agent,
    run_agents,
)


class Agent:
    """Base class for agents. An agent is a name plus a ``run(task)`` method that makes syscalls.

    The same instance can be run on any kernel; while it runs, ``self.ctx`` is its kernel context.
    """

    description: ClassVar[str] = ""
    group: ClassVar[str | None] = None  # None: the group the kernel has for this name

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

    def chat_stream(self, messages, **request: Any) -> ChatStream:
        return chat_stream(messages, **request)

    # memory, storage, files, tools and access: the functions of ``aios.sdk.calls``, as methods
    memory_add = staticmethod(calls.memory_add)
    memory_get = staticmethod(calls.memory_get)
    memory_update = staticmethod(calls.memory_update)
    memory_delete = staticmethod(calls.memory_delete)
    memory_list = staticmethod(calls.memory_list)
    memory_search = staticmethod(calls.memory_search)
    memory_persist = staticmethod(calls.memory_persist)
    storage_put = staticmethod(calls.storage_put)
    storage_get = staticmethod(calls.storage_get)
    storage_delete = staticmethod(calls.storage_delete)
    storage_list = staticmethod(calls.storage_list)
    storage_search = staticmethod(calls.storage_search)
    file_write = staticmethod(calls.file_write)
    file_read = staticmethod(calls.file_read)
    file_list = staticmethod(calls.file_list)
    tool_call = staticmethod(calls.tool_call)
    tools_list = staticmethod(calls.tools_list)
    run_tool_calls = staticmethod(calls.run_tool_calls)
    grant = staticmethod(calls.grant)
    revoke = staticmethod(calls.revoke)
    audit_log = staticmethod(calls.audit_log)

    # -- running ----------------------------------------------------------------------------------
    def spec(self, task: Any = None) -> AgentSpec:
        # on exit the agent's short-term memory is released (or persisted, if it asked)
        return AgentSpec(
            name=self.name, fn=self.run, task=task, group=self.group, exits=[calls.release_on_exit]
        )

    def start(self, kernel: Kernel, task: Any = None) -> AgentRun:
        """Run this agent on ``kernel`` in the calling thread."""
        return run_agent(kernel, self.spec(task))


def run_all(kernel: Kernel, agents_and_tasks: list[tuple[Agent, Any]]) -> list[AgentRun]:
    """Run several agents concurrently on one kernel."""
    return run_agents(kernel, [a.spec(t) for a, t in agents_and_tasks])
