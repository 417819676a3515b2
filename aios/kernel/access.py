"""Access manager: who may do what to which resource, and a record of every decision.

Model (kept small on purpose, like Unix owners + ACLs):
- every agent has a privilege group: ``admin`` (may do anything), ``user`` (the default) or
  ``guest`` (like a user, but runs only the tools that name ``guest``). Groups are part of the
  agent's identity (``aios.kernel.identity``: the registry's ``agents`` table is the one record);
  the kernel's operator assigns them (``set_group``; admins can also do it by syscall). The agent a
  syscall acts for is stamped by the kernel from its credential, never taken from the request.
- a resource is ``(kind, owner, name)``: ``memory``, ``storage``, ``file`` and ``log`` resources are
  owned by the agent whose namespace holds them (``name`` is an item id, key or path, ``*`` for
  the whole namespace); ``tool`` resources are owned by whoever registered the tool (``kernel`` for
  built-ins).
- operations are ``read``, ``write`` and ``execute``. An owner may do anything to its own
  resources; anyone else needs a grant on that resource (or on its namespace, ``*``) for that
  operation. A tool runs for the groups it names, or for agents granted ``execute`` on it.
- only the owner or an admin may grant or revoke.

Every memory, storage and tool syscall goes through ``hook`` before its handler runs: the
managers say which resources a syscall touches (``resources(syscall)``, computed from the same
request object the handler will use, so crafted parameters cannot make the check and the action
disagree) and each is checked here. Every decision, grant, revoke and group change is appended
to ``audit.db`` (SQLite; triggers refuse UPDATE and DELETE), which admins query by syscall.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from aios.kernel.identity import GROUPS, Group, IdentityRegistry
from aios.kernel.syscall import LLMSyscall, Request, Syscall

Operation = Literal["read", "write", "execute"]
ResourceKind = Literal["memory", "storage", "file", "log", "tool"]


class AccessDenied(Exception):
    error_type = "PermissionDenied"


@dataclass(frozen=True)
class Resource:
    kind: str
    owner: str
    name: str = "*"

    def __str__(self) -> str:
        return f"{self.kind}:{self.owner}/{self.name}"


# ---------------------------------------------------------------------------------------------
# Syscall
# ---------------------------------------------------------------------------------------------


class _ResourceOp(Request):
    """A resource ``kind:owner/name`` and an operation. ``owner``: the caller when omitted (for
    tools, the tool's owner is looked up); ``name``: ``*`` for a whole namespace."""

    kind: ResourceKind
    owner: str | None = Field(None, min_length=1, max_length=128)
    name: str = Field("*", min_length=1, max_length=1024)
    operation: Operation


class Grant(_ResourceOp):
    op: Literal["grant"] = "grant"
    grantee: str = Field(min_length=1, max_length=128)


class Revoke(_ResourceOp):
    op: Literal["revoke"] = "revoke"
    grantee: str = Field(min_length=1, max_length=128)


class Check(_ResourceOp):
    """May ``grantee`` (the caller when omitted; others: admins only) do it?"""

    op: Literal["check"] = "check"
    grantee: str | None = Field(None, min_length=1, max_length=128)


class ListGrants(Request):
    op: Literal["grants"] = "grants"


class SetGroup(Request):
    op: Literal["set_group"] = "set_group"
    grantee: str = Field(min_length=1, max_length=128, description="the agent")
    group: Group


class WhoAmI(Request):
    op: Literal["whoami"] = "whoami"


class AuditQuery(Request):
    op: Literal["audit"] = "audit"
    agent: str | None = Field(None, max_length=128)
    outcome: Literal["allowed", "denied", "failed"] | None = None
    since: float | None = None
    limit: int = Field(1000, ge=1, le=100_000)


AccessRequest = Annotated[
    Grant | Revoke | Check | ListGrants | SetGroup | WhoAmI | AuditQuery, Field(discriminator="op")
]


class AccessSyscall(Syscall):
    kind: ClassVar[str] = "access"
    request: AccessRequest


# ---------------------------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, agent TEXT NOT NULL,
    action TEXT NOT NULL, resource TEXT NOT NULL, operation TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', syscall TEXT);
CREATE INDEX IF NOT EXISTS audit_agent ON audit (agent, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS grants (
    kind TEXT NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL, operation TEXT NOT NULL,
    grantee TEXT NOT NULL, granted_by TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (kind, owner, name, operation, grantee));
"""

ResourceFn = Callable[[Syscall], list[tuple[str, str]]]


class AccessManager:
    def __init__(self, data_dir: str | Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(data_dir) / "audit.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: every record survives a process crash; an OS crash may lose the last few.
        # FULL here would fsync once per syscall of every agent.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._grants = {
            tuple(r) for r in self._db.execute("SELECT kind, owner, name, operation, grantee FROM grants")
        }
        self._resolvers: dict[str, Callable[[Syscall], list[tuple[Resource, str]]]] = {}
        self._tool_info: Callable[[str], tuple[str, set[str]] | None] = lambda name: None
        self._closed = False
        # who is who: the registry shares this database and writes its failures to this audit log
        self.identities = IdentityRegistry(data_dir, audit=self._audit)
        self.govern(LLMSyscall.kind, self.llm_resources)

    # -- configuration (kernel operator) ----------------------------------------------------------
    def govern(self, kind: str, resolver: Callable[[Syscall], list[tuple[Resource, str]]]) -> None:
        """Check every syscall of ``kind``: ``resolver`` says which resources it touches, and how."""
        self._resolvers[kind] = resolver

    def set_tool_info(self, fn: Callable[[str], tuple[str, set[str]] | None]) -> None:
        """How to find a tool's owner and the groups it runs for (the tool manager provides it)."""
        self._tool_info = fn

    def group(self, agent: str) -> str:
        return self.identities.group(agent)

    def set_group(
        self, agent: str, group: Group, *, by: str = "kernel", syscall_id: str | None = None
    ) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        self.identities.set_group(agent, group)
        self._audit(by, "set_group", f"agent:{agent}", group, "allowed", "", syscall_id)

    @staticmethod
    def llm_resources(syscall: LLMSyscall) -> list[tuple[Resource, str]]:
        """An LLM syscall reads the caller's storage when it asks for retrieval (``retrieve_k``)."""
        if syscall.request.retrieve_k > 0:
            return [(Resource("storage", syscall.agent, "*"), "read")]
        return []

    # -- decisions --------------------------------------------------------------------------------
    def owner_of(self, res: Resource) -> str | None:
        if res.kind == "tool":
            info = self._tool_info(res.name)
            return None if info is None else info[0]
        return res.owner

    def _decide(self, agent: str, res: Resource, operation: str) -> tuple[bool, str]:
        group = self.group(agent)
        if group == "admin":
            return True, "admin"
        if res.kind == "tool":
            info = self._tool_info(res.name)
            if info is None:
                return False, f"no tool {res.name!r}"
            owner, groups = info
            if operation == "execute" and group in groups:
                return True, f"tool open to group {group}"
            if agent == owner:
                return True, "owner"
            key = ("tool", owner, res.name, operation, agent)
            return (
                (True, "granted")
                if key in self._grants
                else (False, f"{group} may not {operation} tool {res.name}")
            )
        if res.owner == agent:
            return True, "owner"
        for name in (res.name, "*"):
            if (res.kind, res.owner, name, operation, agent) in self._grants:
                return True, f"granted on {res.kind}:{res.owner}/{name}"
        return False, f"{agent} has no {operation} access to {res}"

    def check(
        self, agent: str, res: Resource, operation: str, *, syscall_id: str | None = None
    ) -> tuple[bool, str]:
        """Decide and record the decision in the audit log."""
        ok, why = self._decide(agent, res, operation)
        self._audit(agent, "access", str(res), operation, "allowed" if ok else "denied", why, syscall_id)
        return ok, why

    def require(self, agent: str, res: Resource, operation: str, *, syscall_id: str | None = None) -> None:
        ok, why = self.check(agent, res, operation, syscall_id=syscall_id)
        if not ok:
            raise AccessDenied(why)

    def hook(self, syscall: Syscall) -> str | None:
        """The kernel's access hook: a refusal reason, or None to let the syscall run."""
        resolver = self._resolvers.get(syscall.kind)
        if resolver is None:
            return None  # a kind this manager does not govern (e.g. scheduler queries)
        try:
            touched = resolver(syscall)
        except Exception as exc:  # a request we cannot even describe is refused, and recorded
            self._audit(
                syscall.agent,
                "access",
                f"{syscall.kind}:?",
                "?",
                "denied",
                f"unresolvable: {exc}",
                syscall.id,
            )
            return f"cannot resolve the resources of this request: {exc}"
        if not touched:  # e.g. listing tools: nothing owned is touched, but the request is still recorded
            self._audit(syscall.agent, "access", f"{syscall.kind}:*", "list", "allowed", "", syscall.id)
        for res, operation in touched:
            ok, why = self.check(syscall.agent, res, operation, syscall_id=syscall.id)
            if not ok:
                return why
        return None

    # -- grants -----------------------------------------------------------------------------------
    def _may_administer(self, agent: str, res: Resource) -> bool:
        return self.group(agent) == "admin" or self.owner_of(res) == agent

    def grant(
        self, by: str, res: Resource, operation: str, grantee: str, syscall_id: str | None = None
    ) -> dict[str, Any]:
        owner = self.owner_of(res)
        if owner is None:
            self._audit(
                by, "grant", str(res), operation, "denied", f"to {grantee}: unknown resource", syscall_id
            )
            raise AccessDenied(f"unknown resource {res}")
        res = Resource(res.kind, owner, res.name)
        if not self._may_administer(by, res):
            self._audit(
                by, "grant", str(res), operation, "denied", f"to {grantee}: not owner or admin", syscall_id
            )
            raise AccessDenied(f"only {owner} or an admin may grant access to {res}")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO grants VALUES (?, ?, ?, ?, ?, ?, ?)",
                (res.kind, res.owner, res.name, operation, grantee, by, time.time()),
            )
            self._grants.add((res.kind, res.owner, res.name, operation, grantee))
        self._audit(by, "grant", str(res), operation, "allowed", f"to {grantee}", syscall_id)
        return {"resource": str(res), "operation": operation, "grantee": grantee}

    def revoke(
        self, by: str, res: Resource, operation: str, grantee: str, syscall_id: str | None = None
    ) -> bool:
        owner = self.owner_of(res)
        res = Resource(res.kind, owner or res.owner, res.name)
        if owner is None or not self._may_administer(by, res):
            self._audit(
                by, "revoke", str(res), operation, "denied", f"from {grantee}: not owner or admin", syscall_id
            )
            raise AccessDenied(f"only the owner or an admin may revoke access to {res}")
        with self._lock:
            self._db.execute(
                "DELETE FROM grants WHERE kind = ? AND owner = ? AND name = ? AND operation = ? AND grantee = ?",
                (res.kind, res.owner, res.name, operation, grantee),
            )
            existed = (res.kind, res.owner, res.name, operation, grantee) in self._grants
            self._grants.discard((res.kind, res.owner, res.name, operation, grantee))
        self._audit(by, "revoke", str(res), operation, "allowed", f"from {grantee}", syscall_id)
        return existed

    def grants(self, agent: str) -> list[dict[str, str]]:
        """Grants an agent gave (on its resources) or received; all of them for admins."""
        admin = self.group(agent) == "admin"
        return [
            {"resource": str(Resource(k, o, n)), "operation": op, "grantee": g}
            for k, o, n, op, g in sorted(self._grants)
            if admin or o == agent or g == agent
        ]

    # -- audit log --------------------------------------------------------------------------------
    def _audit(
        self,
        agent: str,
        action: str,
        resource: str,
        operation: str,
        outcome: str,
        detail: str = "",
        syscall_id: str | None = None,
    ) -> None:
        with self._lock:
            if self._closed:
                return
            self._db.execute(
                "INSERT INTO audit (time, agent, action, resource, operation, outcome, detail, syscall) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), agent, action, resource, operation, outcome, detail, syscall_id),
            )

    def outcome(self, syscall: Syscall) -> None:
        """The kernel's done-callback: a syscall that ended in a typed error (a timeout, a quota, a
        tool that failed, a full queue) leaves an audit row with outcome ``failed``; refusals were
        recorded as ``denied`` by the hook already."""
        err = syscall.error
        if err is None or err.type == "PermissionDenied":
            return
        self._audit(syscall.agent or "?", "failed", f"{syscall.kind}:{syscall.agent}", "-", "failed",
                    f"{err.type}: {err.message[:300]}", syscall.id)  # fmt: skip

    def record(
        self, agent: str, action: str, resource: str, operation: str, outcome: str, detail: str = ""
    ) -> None:
        """Append an event to the audit log from outside the managers (the service records every
        request it refuses here, and clients that leave mid-stream)."""
        self._audit(agent, action, resource, operation, outcome, detail)

    def audit_log(
        self,
        *,
        agent: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM audit WHERE 1=1", []
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        if outcome is not None:
            sql += " AND outcome = ?"
            args.append(outcome)
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [dict(r) for r in reversed(rows)]

    # -- syscalls ---------------------------------------------------------------------------------
    def handle(self, syscall: AccessSyscall) -> Any:
        """Access syscalls check their own rights (grant needs ownership, audit needs admin)."""
        r, me = syscall.request, syscall.agent
        res = Resource(r.kind, r.owner or me, r.name) if isinstance(r, _ResourceOp) else None
        match r:
            case Grant():
                return self.grant(me, res, r.operation, r.grantee, syscall.id)
            case Revoke():
                return self.revoke(me, res, r.operation, r.grantee, syscall.id)
            case Check():
                who = r.grantee or me
                if who != me and self.group(me) != "admin":  # answers only about the asking agent
                    self._audit(me, "check", str(res), r.operation, "denied", f"about {who}: not admin", syscall.id)
                    raise AccessDenied("only admins may ask about another agent's access")
                self._audit(me, "check", str(res), r.operation, "allowed", "", syscall.id)
                return self._decide(who, res, r.operation)[0]
            case ListGrants():
                self._audit(me, "grants", f"grants:{me}", "read", "allowed", "", syscall.id)
                return self.grants(me)
            case WhoAmI():
                self._audit(me, "whoami", f"agent:{me}", "read", "allowed", "", syscall.id)
                return {"agent": me, "group": self.group(me)}
            case SetGroup():
                if self.group(me) != "admin":
                    self._audit(
                        me, "set_group", f"agent:{r.grantee}", r.group, "denied", "not admin", syscall.id
                    )
                    raise AccessDenied("only admins may change groups")
                self.set_group(r.grantee, r.group, by=me, syscall_id=syscall.id)
                return True
            case AuditQuery():
                if self.group(me) != "admin":
                    self._audit(me, "audit", "audit:*", "read", "denied", "not admin", syscall.id)
                    raise AccessDenied("only admins may read the audit log")
                self._audit(me, "audit", "audit:*", "read", "allowed", "", syscall.id)
                return self.audit_log(agent=r.agent, outcome=r.outcome, since=r.since, limit=r.limit)
        raise ValueError(f"unknown request {type(r).__name__}")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
        self.identities.close()
