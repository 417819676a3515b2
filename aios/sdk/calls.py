"""Syscall-style functions for agent code: memory, storage, files, tools and access.

Like ``aios.chat``, each call acts for the agent running in this thread or task (``current()``),
builds one syscall object, submits it and waits. A kernel refusal arrives as ``SyscallFailed``
with a typed ``error.type`` (``PermissionDenied``, ``NotFound``, ``QuotaExceeded``,
``ToolTimeout`` ...); invalid arguments raise pydantic's ``ValidationError`` before anything
reaches the kernel.

``owner=`` names another agent's namespace; it works only where that agent (or an admin) granted
access. ``memory_release`` takes no arguments, so it can be an ``AgentSpec`` exit hook directly
(``Agent.spec`` adds it for you).
"""

from __future__ import annotations

from typing import Any

from aios.kernel.access import AccessSyscall
from aios.kernel.identity import IdentitySyscall
from aios.kernel.memory import MemorySyscall
from aios.kernel.storage import StorageSyscall
from aios.kernel.syscall import SyscallRejected, ToolCall
from aios.kernel.tools import ToolSyscall, tool_result_message
from aios.sdk.runtime import current


def _memory(timeout: float | None = None, **req: Any) -> Any:
    ctx = current()
    return ctx.call(MemorySyscall(request=req), timeout)


def _storage(timeout: float | None = None, **req: Any) -> Any:
    ctx = current()
    return ctx.call(StorageSyscall(request=req), timeout)


def _tool(timeout: float | None = None, **req: Any) -> Any:
    ctx = current()
    return ctx.call(ToolSyscall(request=req), timeout)


def _access(timeout: float | None = None, **req: Any) -> Any:
    ctx = current()
    return ctx.call(AccessSyscall(request=req), timeout)


# -- memory (short-term, freed when the agent exits) ---------------------------------------------
def memory_add(
    content: str, metadata: dict[str, Any] | None = None, *, owner: str | None = None
) -> dict[str, Any]:
    """Remember ``content``; returns the item (its ``id`` names it later)."""
    return _memory(op="add", content=content, metadata=metadata, owner=owner)


def memory_get(item_id: str, *, owner: str | None = None) -> dict[str, Any]:
    return _memory(op="get", id=item_id, owner=owner)


def memory_update(
    item_id: str,
    content: str | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    owner: str | None = None,
) -> dict[str, Any]:
    """Replace the content and/or merge metadata of an item."""
    return _memory(op="update", id=item_id, content=content, metadata=metadata, owner=owner)


def memory_delete(item_id: str, *, owner: str | None = None) -> bool:
    return _memory(op="delete", id=item_id, owner=owner)


def memory_list(limit: int = 100, *, owner: str | None = None) -> list[dict[str, Any]]:
    return _memory(op="list", limit=limit, owner=owner)


def memory_search(query: str, k: int = 5, *, owner: str | None = None) -> list[dict[str, Any]]:
    """The ``k`` items most similar in meaning to ``query`` (each with a ``score``)."""
    return _memory(op="search", query=query, k=k, owner=owner)


def memory_persist(persist: bool = True) -> bool:
    """Keep this agent's memory after it exits (in storage, for the next agent of this name)."""
    return _memory(op="persist", persist=persist)


def memory_usage() -> dict[str, Any]:
    return _memory(op="usage")


def memory_release() -> dict[str, Any] | None:
    """Free this agent's memory now (or persist it, if asked). A no-op on a kernel without memory."""
    try:
        return _memory(op="release")
    except SyscallRejected:
        return None


def release_on_exit() -> None:
    """The exit hook ``Agent.spec`` installs: release memory; never raises (the agent is done)."""
    import logging

    try:
        memory_release()
    except Exception:  # a kernel shut down under us, or a failing storage: log, do not mask the run
        logging.getLogger("aios.sdk").warning("releasing memory on agent exit failed", exc_info=True)


# -- storage (durable) ------------------------------------------------------------------------------
def storage_put(
    key: str, content: str, metadata: dict[str, Any] | None = None, *, owner: str | None = None
) -> dict:
    """Store ``content`` under ``key`` durably (on disk when this returns) and index it for search."""
    return _storage(op="put", key=key, content=content, metadata=metadata or {}, owner=owner)


def storage_get(key: str, *, owner: str | None = None) -> dict[str, Any]:
    return _storage(op="get", key=key, owner=owner)


def storage_delete(key: str, *, owner: str | None = None) -> bool:
    return _storage(op="delete", key=key, owner=owner)


def storage_list(prefix: str = "", limit: int = 100, *, owner: str | None = None) -> list[dict[str, Any]]:
    return _storage(op="list", prefix=prefix, limit=limit, owner=owner)


def storage_search(query: str, k: int = 5, prefix: str = "", *, owner: str | None = None) -> list[dict[str, Any]]:
    """Stored items closest in meaning to ``query``, best first (retrieval augmentation).

    ``prefix`` searches only keys that start with it.
    """
    return _storage(op="search", query=query, k=k, prefix=prefix, owner=owner)


def log_append(content: str, event: str = "note") -> int:
    """Append to this agent's interaction log."""
    return _storage(op="log_append", content=content, event=event)


def log_read(limit: int = 100, *, owner: str | None = None) -> list[dict[str, Any]]:
    return _storage(op="log_read", limit=limit, owner=owner)


# -- files (the agent's own directory) ----------------------------------------------------------
def file_write(path: str, content: str | bytes, *, owner: str | None = None) -> dict[str, Any]:
    """Write a file (text, or bytes) at a relative ``path`` inside the agent's directory."""
    if isinstance(content, bytes):
        import base64

        return _storage(
            op="file_write",
            path=path,
            content=base64.b64encode(content).decode(),
            encoding="base64",
            owner=owner,
        )
    return _storage(op="file_write", path=path, content=content, owner=owner)


def file_read(path: str, *, binary: bool = False, owner: str | None = None) -> str | bytes:
    if binary:
        import base64

        return base64.b64decode(_storage(op="file_read", path=path, encoding="base64", owner=owner))
    return _storage(op="file_read", path=path, owner=owner)


def file_list(prefix: str = "", *, owner: str | None = None) -> list[dict[str, Any]]:
    return _storage(op="file_list", prefix=prefix, owner=owner)


def file_delete(path: str, *, owner: str | None = None) -> bool:
    return _storage(op="file_delete", path=path, owner=owner)


# -- tools ---------------------------------------------------------------------------------------
def tools_list() -> list[dict[str, Any]]:
    """The tools this agent may run, as OpenAI function schemas (pass them to ``chat(tools=...)``)."""
    return _tool(op="list")


def tool_call(
    name: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
) -> dict[str, Any]:
    """Run a tool; returns ``{"name", "result", "started", "finished"}``."""
    return _tool(op="call", name=name, arguments=arguments or {}, timeout=timeout)


def run_tool_calls(tool_calls: list[ToolCall] | str) -> list[dict[str, Any]]:
    """Run the tool calls a model asked for; returns the ``tool`` messages to send back.

    Takes the parsed calls (``ChatResult.response.tool_calls``) or the model's raw text, parsed
    with the engine's ``parse_tool_calls`` (a malformed call raises its ``ToolCallError``). A failing
    call becomes an error message for the model instead of an exception, so the agent can let
    the model recover.
    """
    from aios.kernel.syscall import SyscallFailed

    if isinstance(tool_calls, str):
        from aios.kernel.tool_calls import parse_tool_calls

        tool_calls = parse_tool_calls(tool_calls)
    out = []
    for tc in tool_calls:
        try:
            result = tool_call(tc.name, tc.arguments)["result"]
        except SyscallFailed as exc:
            result = {"error": exc.error.type, "message": exc.error.message}
        out.append(tool_result_message(tc.id, result))
    return out


# -- agents (admins only) ---------------------------------------------------------------------------
def agent_add(name: str, group: str = "user", *, rotate: bool = False) -> dict[str, str]:
    """Register agent ``name``; returns ``{"name", "group", "token"}`` (the token is shown once)."""
    return current().call(IdentitySyscall(request={"op": "add", "name": name, "group": group, "rotate": rotate}))


def agent_list() -> list[dict[str, Any]]:
    """Registered agents: name, group, created_at, revoked, has_token (never a token)."""
    return current().call(IdentitySyscall(request={"op": "list"}))


def agent_revoke(name: str) -> bool:
    """Revoke ``name``: its token and every credential issued for it stop working."""
    return current().call(IdentitySyscall(request={"op": "revoke", "name": name}))


# -- access ---------------------------------------------------------------------------------------
def grant(kind: str, name: str, operation: str, to: str, *, owner: str | None = None) -> dict[str, Any]:
    """Let agent ``to`` do ``operation`` (read/write/execute) on your resource ``kind:name``.

    ``name`` is an item id, key, path or tool name; ``*`` means the whole namespace.
    """
    return _access(op="grant", kind=kind, name=name, operation=operation, grantee=to, owner=owner)


def revoke(kind: str, name: str, operation: str, frm: str, *, owner: str | None = None) -> bool:
    return _access(op="revoke", kind=kind, name=name, operation=operation, grantee=frm, owner=owner)


def grants() -> list[dict[str, str]]:
    """Grants this agent gave or received (all of them, for admins)."""
    return _access(op="grants")


def whoami() -> dict[str, str]:
    return _access(op="whoami")


def set_group(agent: str, group: str) -> bool:
    """Admins only: put ``agent`` in ``group`` (admin, user, guest)."""
    return _access(op="set_group", grantee=agent, group=group)


def audit_log(
    agent: str | None = None, outcome: str | None = None, since: float | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Admins only: the access audit log (oldest first), optionally filtered."""
    return _access(op="audit", agent=agent, outcome=outcome, since=since, limit=limit)


__all__ = [
    "agent_add",
    "agent_list",
    "agent_revoke",
    "audit_log",
    "file_delete",
    "file_list",
    "file_read",
    "file_write",
    "grant",
    "grants",
    "log_append",
    "log_read",
    "memory_add",
    "memory_delete",
    "memory_get",
    "memory_list",
    "memory_persist",
    "memory_release",
    "release_on_exit",
    "memory_search",
    "memory_update",
    "memory_usage",
    "revoke",
    "run_tool_calls",
    "set_group",
    "storage_delete",
    "storage_get",
    "storage_list",
    "storage_put",
    "storage_search",
    "tool_call",
    "tools_list",
    "whoami",
]
