"""Wiring: build the storage, memory, tool and access managers of one kernel and plug them in.

Kept apart from ``kernel.py`` so the kernel object stays about routing; this file is the one place
that says which manager serves which syscall kind and how the access manager sees each of them.
Everything is created per kernel (no module-level state).

Order matters: storage first (memory evicts into it, tools read files through it), access last
(it needs to ask the others which resources a syscall touches).

To share one loaded embedding model between kernels (tests, benchmarks), set
``kernel.modules["storage"].embedder`` before the first storage or memory operation; memory
reads the embedder from storage, so there is exactly one per kernel.
"""

from __future__ import annotations

from typing import Any

from aios.kernel.access import AccessManager, AccessSyscall, Resource
from aios.kernel.embedding import make_embedder
from aios.kernel.identity import IdentitySyscall
from aios.kernel.memory import MemoryManager, MemorySyscall
from aios.kernel.storage import StorageManager, StorageSyscall
from aios.kernel.tools import Tool, ToolManager, ToolSyscall, install_builtins


def install_managers(kernel: Any) -> None:
    cfg = kernel.config
    storage = StorageManager(
        cfg.data_dir,
        url=cfg.storage_url,
        embedder=make_embedder(cfg.embedder),
        quota_bytes=int(cfg.storage_quota_mb * (1 << 20)),
        quota_objects=cfg.storage_quota_objects,
    )
    memory = MemoryManager(
        storage, quota_bytes=cfg.memory_quota_kb * 1024, budget_bytes=int(cfg.memory_budget_mb * (1 << 20))
    )
    tools = ToolManager(storage=storage, kernel=kernel, spawn=kernel.spawn)
    install_builtins(tools)
    access = AccessManager(storage.data_dir)

    access.set_tool_info(tools.info)
    tools.can_execute = lambda agent, tool: access._decide(
        agent, Resource("tool", tool.owner, tool.name), "execute"
    )[0]
    access.govern(MemorySyscall.kind, memory.resources)
    access.govern(StorageSyscall.kind, storage.resources)
    access.govern(ToolSyscall.kind, tools.resources)
    kernel.set_access_hook(access.hook, access.outcome)
    kernel.identities = access.identities
    kernel.register(IdentitySyscall.kind, access.identities.handle)

    kernel.register(MemorySyscall.kind, memory.handle)
    kernel.register(StorageSyscall.kind, storage.handle)
    kernel.register(ToolSyscall.kind, tools.handle)
    kernel.register(AccessSyscall.kind, access.handle)
    # memory before storage in shutdown order (the kernel closes modules in insertion order);
    # storage closes its SQLite and index; access closes the audit log last.
    kernel.modules.update(memory=memory, tools=tools, storage=storage, access=access)
    core = getattr(kernel, "_llm", None)  # a core handed to the kernel (``llm=``) exists already
    if core is not None:
        wire_llm(kernel, core)


def wire_llm(kernel: Any, core: Any) -> None:
    """Serve LLM syscalls' ``retrieve_k``: the engine calls ``retriever(agent, query, k)``, which
    searches only that agent's own namespace. Called at install time for a core given to the
    kernel, and by ``Kernel.llm`` for one it builds lazily. A core that has its own retriever, or
    no such hook (a remote backend), is left alone."""
    storage = kernel.modules.get("storage")
    if storage is not None and hasattr(core, "retriever") and core.retriever is None:
        core.retriever = storage.retrieve


__all__ = ["Tool", "install_managers", "wire_llm"]
