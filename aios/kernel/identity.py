"""Identity the kernel issues: registered agents, their secret tokens, and in-process credentials.

Why: an agent's name used to be a string any code could write into a syscall. Now the kernel
derives who is asking from something only it hands out:

- over the wire (the service), a secret **token** given once by ``add``; the kernel keeps only its
  SHA-256 (tokens are 256 random bits, so a fast hash is enough) and maps it back to the agent;
- in process, a ``Credential`` object the kernel issued itself. Credentials are compared by
  identity, never by value: a ``Credential("alice", "admin")`` built by hand is not one the kernel
  knows, so it is refused. Each issued credential is remembered (weakly) with the agent's
  *epoch*; revoking an agent bumps the epoch, so every credential issued before stops working even
  if the name is added again later.

The kernel's creator holds ``kernel.owner`` (the admin capability, agent name ``kernel``) and
spawns in-process agents with ``credential_for``. An agent's code runs inside its own context
(``acting``, a ``ContextVar`` the SDK sets); while one is set the kernel accepts only that
context's credential and refuses to hand out the owner capability to a non-admin. That is as far
as a process can hold the rule: agents in one interpreter share memory, so the real boundary is
the process (the service); see docs/security.md.

Rows live in the kernel's ``audit.db`` (table ``agents``), next to the audit log every
authentication failure is written to. An agent's group is stored here and nowhere else: the
access manager asks ``group(name)`` at every decision, so a demotion takes effect at once.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from aios.kernel.syscall import Request, Syscall, SyscallRejected

Group = Literal["admin", "user", "guest"]
GROUPS: tuple[str, ...] = ("admin", "user", "guest")
OWNER = "kernel"  # the name of the kernel's creator (also the owner of the built-in tools)
_NAME = re.compile(r"^[A-Za-z0-9_.@:+-][A-Za-z0-9_.@:+ -]{0,127}$")


@dataclass(frozen=True, eq=False)
class Credential:
    """Proof, inside one process, that the kernel vouches for ``agent``. Only issued ones count."""

    agent: str
    group: Group


class AuthenticationFailed(Exception):
    """A token or credential the kernel does not accept (missing, unknown, forged or revoked)."""

    error_type = "AuthenticationFailed"


class NotAdmin(Exception):
    error_type = "PermissionDenied"


class UnknownAgent(KeyError):
    error_type = "NotFound"


class CredentialRejected(SyscallRejected):
    """A syscall submitted without a credential this kernel issued and still honours."""

    error_type = "AuthenticationFailed"


class AgentInfo(BaseModel):
    """What ``list`` tells about an agent (never its token or the token's hash)."""

    name: str
    group: Group
    created_at: float
    revoked: bool
    has_token: bool
    expires_at: float | None = None


# -- the acting context (set by the SDK around agent code) ------------------------------------------
_acting: contextvars.ContextVar[Credential | None] = contextvars.ContextVar("aios_acting", default=None)


def acting() -> Credential | None:
    """The credential of the agent whose code runs in this thread/task, if any."""
    return _acting.get()


def act_as(credential: Credential) -> contextvars.Token:
    return _acting.set(credential)


def stop_acting(token: contextvars.Token) -> None:
    _acting.reset(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# -- agent-management syscalls (admins only) ---------------------------------------------------------
class AddAgent(Request):
    op: Literal["add"] = "add"
    name: str = Field(min_length=1, max_length=128)
    group: Group = "user"
    rotate: bool = Field(False, description="issue a new token for an existing agent (the old one stops working)")
    ttl_s: float | None = Field(None, gt=0, description="the token expires this many seconds from now")


class ListAgents(Request):
    op: Literal["list"] = "list"


class RevokeAgent(Request):
    op: Literal["revoke"] = "revoke"
    name: str = Field(min_length=1, max_length=128)


IdentityRequest = AddAgent | ListAgents | RevokeAgent


class IdentitySyscall(Syscall):
    kind: ClassVar[str] = "identity"
    request: AddAgent | ListAgents | RevokeAgent = Field(discriminator="op")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY, grp TEXT NOT NULL, token_hash TEXT UNIQUE, created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, expires_at REAL);
"""

Audit = Callable[..., None]  # (agent, action, resource, operation, outcome, detail, syscall_id)


class IdentityRegistry:
    """Registered agents of one kernel; issues and checks credentials. Thread-safe."""

    def __init__(self, data_dir: str | Path, *, audit: Audit | None = None):
        self._audit: Audit = audit or (lambda *a, **k: None)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(data_dir) / "audit.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a revocation acknowledged is on disk
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        if "expires_at" not in {r[1] for r in self._db.execute("PRAGMA table_info(agents)")}:
            self._db.execute("ALTER TABLE agents ADD COLUMN expires_at REAL")  # registries made before expiry
        # groups set before identities existed (the access manager's old ``groups`` table)
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'groups'").fetchone():
            self._db.execute(
                "INSERT OR IGNORE INTO agents (name, grp, created_at) SELECT agent, grp, ? FROM groups",
                (time.time(),),
            )
        self._rows: dict[str, dict[str, Any]] = {
            r["name"]: dict(r) for r in self._db.execute("SELECT * FROM agents")
        }
        self._by_hash = {r["token_hash"]: n for n, r in self._rows.items() if r["token_hash"] and not r["revoked"]}
        self._epoch: dict[str, int] = {}
        self._issued: weakref.WeakKeyDictionary[Credential, int] = weakref.WeakKeyDictionary()
        self._closed = False

    # -- registry ---------------------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"agent name {name!r}: 1-128 letters, digits, spaces or _.@:+- (not starting with a space)")

    def _write(self, name: str, **cols: Any) -> None:
        """Insert or update one row, on disk before the cache changes (caller holds the lock)."""
        row = {**self._rows.get(name, {"name": name, "grp": "user", "token_hash": None,
                                       "created_at": time.time(), "revoked": 0, "expires_at": None}), **cols}  # fmt: skip
        self._db.execute(
            "INSERT OR REPLACE INTO agents (name, grp, token_hash, created_at, revoked, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (row["name"], row["grp"], row["token_hash"], row["created_at"], row["revoked"], row.get("expires_at")),
        )
        old = self._rows.get(name)
        if old and old["token_hash"]:
            self._by_hash.pop(old["token_hash"], None)
        self._rows[name] = row
        if row["token_hash"] and not row["revoked"]:
            self._by_hash[row["token_hash"]] = name

    def add(
        self, name: str, group: str = "user", *, rotate: bool = False, ttl_s: float | None = None, by: str = OWNER
    ) -> str:
        """Register ``name`` in ``group``; returns its secret token (shown once, stored hashed).

        Re-adding a name that already has a live token is an error unless ``rotate`` (then the old
        token and every credential issued before stop working). A name known only in process
        (spawned by ``credential_for``) or revoked can be given a token with ``rotate``. ``ttl_s``:
        the token (and every credential of the agent) expires that many seconds from now."""
        self._check_name(name)
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        if name == OWNER:
            raise ValueError(f"{OWNER!r} is the kernel's own name")
        token = "aios_" + secrets.token_urlsafe(32)
        with self._lock:
            row = self._rows.get(name)
            if row is not None and not rotate and (row["token_hash"] or row["revoked"]):
                raise ValueError(f"agent {name!r} exists already (rotate=True issues a new token)")
            if row is not None and rotate:
                self._epoch[name] = self._epoch.get(name, 0) + 1
            expires = None if ttl_s is None else time.time() + ttl_s
            self._write(name, grp=group, token_hash=hash_token(token), revoked=0, expires_at=expires)
        self._audit(by, "agent_add", f"agent:{name}", group, "allowed", "rotated" if rotate else "")
        return token

    def revoke(self, name: str, *, by: str = OWNER) -> None:
        """The agent's token and every credential issued for it stop working, now."""
        with self._lock:
            if name not in self._rows or name == OWNER:
                raise UnknownAgent(f"no agent {name!r}")
            self._write(name, revoked=1)
            self._epoch[name] = self._epoch.get(name, 0) + 1
        self._audit(by, "agent_revoke", f"agent:{name}", "write", "allowed", "")

    def list(self) -> list[AgentInfo]:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: r["name"])
        return [
            AgentInfo(name=r["name"], group=r["grp"], created_at=r["created_at"], revoked=bool(r["revoked"]),
                      has_token=r["token_hash"] is not None, expires_at=r.get("expires_at"))
            for r in rows
        ]  # fmt: skip

    def group(self, name: str) -> str:
        row = self._rows.get(name)
        return "user" if row is None else row["grp"]

    def set_group(self, name: str, group: str) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        self._check_name(name)
        with self._lock:
            self._write(name, grp=group)

    def revoked(self, name: str) -> bool:
        """Revoked, or past its expiry: either way nothing of this agent's is honoured."""
        row = self._rows.get(name)
        return bool(row and (row["revoked"] or (row.get("expires_at") is not None and time.time() > row["expires_at"])))

    # -- credentials ------------------------------------------------------------------------------
    def issue(self, name: str, group: str | None = None) -> Credential:
        """A credential for ``name`` (registered in process if new). Only the kernel calls this."""
        self._check_name(name)
        if group is not None and group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        with self._lock:
            row = self._rows.get(name)
            if row is not None and self.revoked(name):
                raise AuthenticationFailed(f"agent {name!r} is revoked or expired")
            if row is None or (group is not None and row["grp"] != group):
                self._write(name, grp=group or (row["grp"] if row else "user"))
            cred = Credential(name, self._rows[name]["grp"])
            self._issued[cred] = self._epoch.get(name, 0)
        return cred

    def authenticate(self, token: str) -> Credential:
        """The credential of the agent holding ``token``; every failure is written to the audit log."""
        if not isinstance(token, str) or not token:
            self._audit("?", "authenticate", "token:missing", "auth", "denied", "no token")
            raise AuthenticationFailed("no token")
        digest = hash_token(token)
        self._sync(digest)
        name = self._by_hash.get(digest)
        if name is None or self.revoked(name):
            self._audit("?", "authenticate", f"token:{digest[:8]}", "auth", "denied", "unknown, revoked or expired token")
            raise AuthenticationFailed("unknown, revoked or expired token")
        return self.issue(name)

    def _sync(self, digest: str) -> None:
        """Bring the cached rows that ``digest`` touches up to date with the database.

        Why: another process may change them under a running kernel (``aios agent add|revoke``
        next to ``aios serve``); a token is judged by what is on disk at the moment it is used."""
        with self._lock:
            if self._closed:
                return
            hit = self._db.execute("SELECT name FROM agents WHERE token_hash = ?", (digest,)).fetchone()
            for name in {hit["name"] if hit else None, self._by_hash.get(digest)} - {None}:
                row = self._db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
                old = self._rows.get(name)
                if row is None or dict(row) == old:
                    continue
                row = dict(row)
                if old is not None:
                    if old["token_hash"]:
                        self._by_hash.pop(old["token_hash"], None)
                    if old["token_hash"] != row["token_hash"] or row["revoked"]:
                        self._epoch[name] = self._epoch.get(name, 0) + 1  # credentials issued before die
                self._rows[name] = row
                if row["token_hash"] and not row["revoked"]:
                    self._by_hash[row["token_hash"]] = name

    def verify(self, credential: Any) -> str | None:
        """Why ``credential`` is not acceptable now (None when it is)."""
        if credential is None:
            return "no credential"
        if not isinstance(credential, Credential):
            return f"not a credential: {type(credential).__name__}"
        epoch = self._issued.get(credential)
        if epoch is None:
            return f"a credential for {credential.agent!r} this kernel did not issue"
        if self.revoked(credential.agent) or epoch != self._epoch.get(credential.agent, 0):
            return f"the credential of {credential.agent!r} was revoked or has expired"
        return None

    def refuse(self, credential: Any, why: str, syscall_id: str | None = None) -> CredentialRejected:
        """Record an authentication failure and build the error to raise."""
        who = credential.agent if isinstance(credential, Credential) else "?"
        self._audit(who, "authenticate", "credential", "auth", "denied", why, syscall_id)
        return CredentialRejected(why)

    # -- syscalls (admins only; the access hook does not govern this kind) ---------------------------
    def handle(self, syscall: IdentitySyscall) -> Any:
        r, me = syscall.request, syscall.agent
        if self.group(me) != "admin":
            self._audit(me, f"agent_{r.op}", "agents", "admin", "denied", "not admin", syscall.id)
            raise NotAdmin("only admins manage agents")
        match r:
            case AddAgent():
                return {"name": r.name, "group": r.group, "token": self.add(r.name, r.group, rotate=r.rotate, ttl_s=r.ttl_s, by=me)}
            case ListAgents():
                return [a.model_dump() for a in self.list()]
            case RevokeAgent():
                self.revoke(r.name, by=me)
                return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
