"""Memory manager: an agent's short-term memory, alive while the agent is.

An agent adds, gets, updates, deletes, lists and searches (by text similarity) memory items:
text plus flat metadata, named by an id the kernel gives. Two limits, like RAM in an OS:

- a per-agent quota (bytes): an add or update past it fails with ``QuotaExceeded``;
- a kernel-wide budget (bytes) on what is resident in this process: past it, the least recently
  used items of any agent are *evicted to storage* (the storage manager's ``memory_swap`` table,
  with their embedding) and brought back transparently the next time they are touched. Nothing
  is dropped: an evicted item is still counted against its owner's quota and still found by
  ``list`` and ``search``.

When the agent exits (``release``, called by the SDK's exit hook), its items are freed, unless
it asked to persist, in which case they are written to storage and come back for the next agent
of that name. Access between agents is the access manager's decision (before the handler runs);
this module looks items up only under the namespace it was given, so an id belonging to another
agent is simply not found.

All state lives on the instance, guarded by one lock; embeddings are computed outside it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from aios.kernel.access import Resource
from aios.kernel.embedding import cosine
from aios.kernel.storage import MetaValue, StorageManager
from aios.kernel.syscall import Request, Syscall


class MemoryManagerError(Exception):
    error_type = "MemoryError"


class QuotaExceeded(MemoryManagerError):
    error_type = "QuotaExceeded"


class MemoryNotFound(MemoryManagerError):
    error_type = "NotFound"


# ---------------------------------------------------------------------------------------------
# Syscall
# ---------------------------------------------------------------------------------------------

class _MemoryOp(Request):
    """Fields every memory request has. ``owner`` is the namespace (the caller's own when omitted)."""

    owner: str | None = Field(None, min_length=1, max_length=128)


_Id = Annotated[str, Field(min_length=1, max_length=64)]
_Content = Annotated[str, Field(max_length=1 << 20)]
_Meta = Annotated[dict[str, MetaValue], Field(max_length=64)]


class AddMemory(_MemoryOp):
    op: Literal["add"] = "add"
    content: _Content
    metadata: _Meta | None = None


class GetMemory(_MemoryOp):
    op: Literal["get"] = "get"
    id: _Id


class UpdateMemory(_MemoryOp):
    op: Literal["update"] = "update"
    id: _Id
    content: _Content | None = None
    metadata: _Meta | None = None

    @model_validator(mode="after")
    def _check(self) -> UpdateMemory:
        if self.content is None and self.metadata is None:
            raise ValueError("memory op 'update' needs content or metadata")
        return self


class DeleteMemory(_MemoryOp):
    op: Literal["delete"] = "delete"
    id: _Id


class ListMemory(_MemoryOp):
    op: Literal["list"] = "list"
    limit: int = Field(100, ge=1, le=10_000)


class SearchMemory(_MemoryOp):
    op: Literal["search"] = "search"
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(5, ge=1, le=50)


class PersistMemory(_MemoryOp):
    op: Literal["persist"] = "persist"
    persist: bool = True


class ReleaseMemory(_MemoryOp):
    op: Literal["release"] = "release"


class MemoryUsage(_MemoryOp):
    op: Literal["usage"] = "usage"


MemoryRequest = Annotated[
    AddMemory | GetMemory | UpdateMemory | DeleteMemory | ListMemory | SearchMemory | PersistMemory
    | ReleaseMemory | MemoryUsage,
    Field(discriminator="op"),
]  # fmt: skip


class MemorySyscall(Syscall):
    kind: ClassVar[str] = "memory"
    request: MemoryRequest


# ---------------------------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------------------------


@dataclass
class MemItem:
    id: str
    content: str
    metadata: dict[str, MetaValue]
    created: float
    updated: float
    embedding: list[float] | None = None

    @property
    def size(self) -> int:
        return len(self.content.encode()) + len(json.dumps(self.metadata))

    def public(self, resident: bool = True) -> dict[str, Any]:
        return {
            "id": self.id,
            "content": self.content,
            "metadata": dict(self.metadata),
            "created": self.created,
            "updated": self.updated,
            "resident": resident,
        }

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "content": self.content,
            "metadata": self.metadata,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any], embedding: list[float] | None) -> MemItem:
        return cls(p["id"], p["content"], p["metadata"], p["created"], p["updated"], embedding)


@dataclass
class AgentMemory:
    """Bookkeeping for one agent: sizes of all its items (resident or evicted) and its wishes."""

    sizes: dict[str, int] = field(default_factory=dict)
    persist: bool = False

    @property
    def used(self) -> int:
        return sum(self.sizes.values())


class MemoryManager:
    def __init__(self, storage: StorageManager, *, quota_bytes: int = 1 << 20, budget_bytes: int = 64 << 20):
        self.storage = storage
        self.quota_bytes = quota_bytes
        self.budget_bytes = budget_bytes
        self._lock = threading.RLock()
        self._resident: OrderedDict[tuple[str, str], MemItem] = OrderedDict()  # LRU order, oldest first
        self._resident_bytes = 0
        self._agents: dict[str, AgentMemory] = {}
        self.evictions = 0
        self.swap_ins = 0

    # -- bookkeeping ------------------------------------------------------------------------------
    def _agent(self, agent: str) -> AgentMemory:
        """The agent's record; on first touch, adopt items it persisted earlier (in storage)."""
        am = self._agents.get(agent)
        if am is None:
            # Items in storage for an agent we do not know were persisted by an earlier run (or
            # evicted before a crash): adopt them and keep persisting until told otherwise.
            sizes = self.storage.swap_sizes(agent)
            am = self._agents[agent] = AgentMemory(sizes=sizes, persist=bool(sizes))
        return am

    def _make_resident(self, agent: str, item: MemItem) -> None:
        key = (agent, item.id)
        old = self._resident.pop(key, None)
        if old is not None:
            self._resident_bytes -= old.size
        self._resident[key] = item
        self._resident_bytes += item.size
        self._evict(keep=key)

    def _evict(self, keep: tuple[str, str] | None = None) -> None:
        """Write least-recently-used items to storage until resident bytes fit the budget."""
        while self._resident_bytes > self.budget_bytes:
            victim = next((k for k in self._resident if k != keep), None)
            if victim is None:
                return  # only the item being used is left: it stays, even if alone over budget
            item = self._resident[victim]
            self.storage.swap_put(victim[0], item.id, item.payload(), item.embedding, item.size)
            del self._resident[victim]
            self._resident_bytes -= item.size
            self.evictions += 1

    def _load(self, agent: str, item_id: str) -> MemItem:
        """Find an item (resident or evicted), make it resident and most recently used."""
        key = (agent, item_id)
        item = self._resident.get(key)
        if item is not None:
            self._resident.move_to_end(key)
            return item
        if item_id not in self._agent(agent).sizes:
            raise MemoryNotFound(f"no memory item {item_id!r}")
        got = self.storage.swap_get(agent, item_id)
        if got is None:  # pragma: no cover - sizes and swap are updated together
            raise MemoryNotFound(f"no memory item {item_id!r}")
        item = MemItem.from_payload(*got)
        self.storage.swap_delete(agent, item_id)
        self.swap_ins += 1
        self._make_resident(agent, item)
        return item

    def _check_quota(self, am: AgentMemory, item_id: str | None, new_size: int) -> None:
        used = am.used - (am.sizes.get(item_id, 0) if item_id else 0)
        if used + new_size > self.quota_bytes:
            raise QuotaExceeded(
                f"memory quota of {self.quota_bytes} bytes exceeded ({used} used, {new_size} more asked)"
            )

    # -- operations -------------------------------------------------------------------------------
    def add(self, agent: str, content: str, metadata: dict[str, MetaValue] | None = None) -> dict[str, Any]:
        vec = self.storage.embedder.embed([content])[0]
        now = time.time()
        item = MemItem(uuid.uuid4().hex, content, dict(metadata or {}), now, now, vec)
        with self._lock:
            am = self._agent(agent)
            self._check_quota(am, None, item.size)
            am.sizes[item.id] = item.size
            self._make_resident(agent, item)
            return item.public()

    def get(self, agent: str, item_id: str) -> dict[str, Any]:
        with self._lock:
            return self._load(agent, item_id).public()

    def update(
        self,
        agent: str,
        item_id: str,
        content: str | None = None,
        metadata: dict[str, MetaValue] | None = None,
    ) -> dict[str, Any]:
        vec = self.storage.embedder.embed([content])[0] if content is not None else None
        with self._lock:
            am = self._agent(agent)
            old = self._load(agent, item_id)
            new = MemItem(
                old.id,
                old.content if content is None else content,
                old.metadata if metadata is None else {**old.metadata, **metadata},
                old.created,
                time.time(),
                old.embedding if vec is None else vec,
            )
            self._check_quota(am, item_id, new.size)
            am.sizes[item_id] = new.size
            self._make_resident(agent, new)
            return new.public()

    def delete(self, agent: str, item_id: str) -> bool:
        with self._lock:
            am = self._agent(agent)
            if item_id not in am.sizes:
                raise MemoryNotFound(f"no memory item {item_id!r}")
            item = self._resident.pop((agent, item_id), None)
            if item is not None:
                self._resident_bytes -= item.size
            else:
                self.storage.swap_delete(agent, item_id)
            del am.sizes[item_id]
            return True

    def _all(self, agent: str) -> list[tuple[MemItem, bool]]:
        am = self._agent(agent)
        out = [(it, True) for (a, _), it in self._resident.items() if a == agent]
        if len(out) < len(am.sizes):
            out += [(MemItem.from_payload(p, e), False) for _, p, e, _ in self.storage.swap_list(agent)]
        return out

    def list(self, agent: str, limit: int = 100) -> list[dict[str, Any]]:
        """All the agent's items, oldest first (evicted ones read from storage, left there)."""
        with self._lock:
            items = sorted(self._all(agent), key=lambda p: (p[0].created, p[0].id))
            return [it.public(resident) for it, resident in items[:limit]]

    def search(self, agent: str, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` items most similar to ``query``; hits are brought back into memory."""
        qv = self.storage.embedder.embed([query])[0]
        with self._lock:
            scored = sorted(
                ((cosine(qv, it.embedding), it.id) for it, _ in self._all(agent) if it.embedding is not None),
                reverse=True,
            )[:k]
            out = []
            for score, item_id in scored:
                d = self._load(agent, item_id).public()
                d["score"] = score
                out.append(d)
            return out

    def set_persist(self, agent: str, persist: bool = True) -> bool:
        with self._lock:
            self._agent(agent).persist = persist
            return persist

    def release(self, agent: str) -> dict[str, Any]:
        """The agent is gone: free its memory, or write it to storage if it asked to persist."""
        with self._lock:
            am = self._agents.pop(agent, None) or self._agent(agent)
            self._agents.pop(agent, None)
            in_storage = any((agent, i) not in self._resident for i in am.sizes)
            mine = [k for k in self._resident if k[0] == agent]
            for key in mine:
                item = self._resident.pop(key)
                self._resident_bytes -= item.size
                if am.persist:
                    self.storage.swap_put(agent, item.id, item.payload(), item.embedding, item.size)
            if not am.persist and in_storage:  # no write (and no fsync) when nothing was evicted
                self.storage.swap_drop_agent(agent)
            return {"items": len(am.sizes), "persisted": am.persist}

    def usage(self, agent: str | None = None) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "resident_bytes": self._resident_bytes,
                "budget_bytes": self.budget_bytes,
                "resident_items": len(self._resident),
                "evictions": self.evictions,
                "swap_ins": self.swap_ins,
            }
            if agent is not None:
                am = self._agent(agent)
                out.update(agent=agent, used_bytes=am.used, quota_bytes=self.quota_bytes, items=len(am.sizes))
            return out

    # -- syscalls ---------------------------------------------------------------------------------
    @staticmethod
    def resources(syscall: MemorySyscall) -> list[tuple[Resource, str]]:
        r = syscall.request
        ns = r.owner or syscall.agent
        match r:
            case GetMemory():
                return [(Resource("memory", ns, r.id), "read")]
            case UpdateMemory() | DeleteMemory():
                return [(Resource("memory", ns, r.id), "write")]
            case ListMemory() | SearchMemory() | MemoryUsage():
                return [(Resource("memory", ns, "*"), "read")]
        return [(Resource("memory", ns, "*"), "write")]  # add, persist, release

    def handle(self, syscall: MemorySyscall) -> Any:
        r = syscall.request
        ns = r.owner or syscall.agent
        match r:
            case AddMemory():
                return self.add(ns, r.content, r.metadata)
            case GetMemory():
                return self.get(ns, r.id)
            case UpdateMemory():
                return self.update(ns, r.id, r.content, r.metadata)
            case DeleteMemory():
                return self.delete(ns, r.id)
            case ListMemory():
                return self.list(ns, r.limit)
            case SearchMemory():
                return self.search(ns, r.query, r.k)
            case PersistMemory():
                return self.set_persist(ns, r.persist)
            case ReleaseMemory():
                return self.release(ns)
            case MemoryUsage():
                return self.usage(ns)
        raise MemoryManagerError(f"unknown request {type(r).__name__}")  # pragma: no cover
