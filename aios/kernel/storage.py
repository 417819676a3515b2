"""Storage manager: long-term, durable, per-agent storage with retrieval.

The parts, one file each (this one serves the syscalls and owns items, the one thing that spans
SQLite and the index):
- ``storage_syscall``: the requests (a discriminated union on ``op``) and the typed errors.
- ``storage_sqlite``: ``storage.db`` (WAL, ``synchronous=FULL``), the source of truth; logs, the
  memory manager's swap, usage.
- ``storage_index``: the chromadb vector index derived from SQLite, reconciled with it on open and
  after an outage.
- ``storage_files``: file contents under ``files/<agent dir>/...``, confined to the agent's directory.
- ``storage_quota``: per-agent byte and object quotas, charged before a write.

Items: writes go SQLite first, then the index; every row carries a ``version`` that the index
records in its metadata, so a crash between the two writes loses nothing that was acknowledged and
leaves no permanent inconsistency (see ``storage_index``). When the index does not answer, writes
still commit to SQLite and are acknowledged; searches fail with ``IndexUnavailable`` meanwhile
(gets, lists and files keep working).

Every operation names an ``owner`` namespace (the caller's own by default). Which caller may touch
which namespace is the access manager's decision, made before the handler runs; this module then
serves strictly inside the namespace it was given: every SQL statement and every index query
filters on it, so an item id or key cannot reach into another namespace.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aios.kernel.access import Resource
from aios.kernel.embedding import Embedder, make_embedder
from aios.kernel.group_commit import GroupCommit
from aios.kernel.storage_files import FileStore
from aios.kernel.storage_index import VectorIndex
from aios.kernel.storage_quota import QuotaExceeded as QuotaExceeded  # re-exported for callers
from aios.kernel.storage_quota import StorageQuota
from aios.kernel.storage_sqlite import SqliteStore

# The syscall's types, re-exported: callers import them from here.
from aios.kernel.storage_syscall import MAX_CONTENT as MAX_CONTENT
from aios.kernel.storage_syscall import DeleteItem as DeleteItem
from aios.kernel.storage_syscall import FileDelete as FileDelete
from aios.kernel.storage_syscall import FileList as FileList
from aios.kernel.storage_syscall import FileRead as FileRead
from aios.kernel.storage_syscall import FileWrite as FileWrite
from aios.kernel.storage_syscall import GetItem as GetItem
from aios.kernel.storage_syscall import IndexUnavailable as IndexUnavailable
from aios.kernel.storage_syscall import InvalidPath as InvalidPath
from aios.kernel.storage_syscall import ListItems as ListItems
from aios.kernel.storage_syscall import LogAppend as LogAppend
from aios.kernel.storage_syscall import LogRead as LogRead
from aios.kernel.storage_syscall import MetaValue as MetaValue
from aios.kernel.storage_syscall import NotFound as NotFound
from aios.kernel.storage_syscall import PutItem as PutItem
from aios.kernel.storage_syscall import SearchItems as SearchItems
from aios.kernel.storage_syscall import StorageBusy as StorageBusy
from aios.kernel.storage_syscall import StorageError as StorageError
from aios.kernel.storage_syscall import StorageRequest as StorageRequest
from aios.kernel.storage_syscall import StorageSyscall as StorageSyscall

log = logging.getLogger("aios.storage")


@dataclass
class _Write:
    """One put, as queued for the group commit (``row``: the row it wrote, once committed)."""

    agent: str
    key: str
    content: str
    metadata: str
    vec: list[float]
    row: Any = None


def _item(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "key": r["key"],
        "content": r["content"],
        "metadata": json.loads(r["metadata"]),
        "version": r["version"],
        "created": r["created"],
        "updated": r["updated"],
    }


class StorageManager:
    """Durable per-agent items, files and logs, with a chromadb index kept consistent with SQLite."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        url: str | None = None,
        embedder: Embedder | None = None,
        quota_bytes: int = 64 << 20,
        quota_objects: int = 10_000,
    ):
        self._tmp = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="aios-data-"))
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.db = SqliteStore(self.data_dir / "storage.db")
        self.files = FileStore(self.db, self.data_dir / "files")
        self.files_root = self.files.root
        self.index = VectorIndex(
            self.db, embedder or make_embedder("minilm"), path=self.data_dir / "chroma", url=url
        )
        self._commits = GroupCommit(self._write_batch)  # puts (see ``put``)
        self.quota = StorageQuota(self.db.usage, max_bytes=quota_bytes, max_objects=quota_objects)
        # The parts' operations this manager offers as its own (one implementation each, there).
        self.agent_dir = self.files.agent_dir
        self.file_write, self.file_read = self.files.write, self.files.read
        self.file_list, self.file_delete = self.files.list, self.files.delete
        self.log_append, self.log_read = self.db.log_append, self.db.log_read
        self.swap_put, self.swap_get = self.db.swap_put, self.db.swap_get
        self.swap_delete, self.swap_drop_agent = self.db.swap_delete, self.db.swap_drop_agent
        self.swap_list, self.swap_sizes = self.db.swap_list, self.db.swap_sizes
        self.usage = self.db.usage
        self.reconcile, self.consistency = self.index.reconcile, self.index.consistency

    @property
    def embedder(self) -> Embedder:
        """The one embedder of this kernel (memory reads it from here); replaceable before first use."""
        return self.index.embedder

    @embedder.setter
    def embedder(self, embedder: Embedder) -> None:
        self.index.embedder = embedder

    # -- items ------------------------------------------------------------------------------------
    def put(
        self, agent: str, key: str, content: str, metadata: dict[str, MetaValue] | None = None
    ) -> dict[str, Any]:
        """Insert or replace ``key``; returns once SQLite has it on disk and the index has it (or,
        when the index does not answer, is marked stale: see the module docstring on faults).

        Group commit (``aios.kernel.group_commit``): puts that arrive while another batch is being
        written wait and are then written together, in one transaction (one fsync) and one index
        upsert. Each caller is acknowledged only after its batch is durable and indexed; a failed
        batch fails all of its callers and writes none of them.
        """
        if len(content.encode()) > MAX_CONTENT:
            raise StorageError(f"item is larger than {MAX_CONTENT} bytes")
        vec = self.embedder.embed([content])[0]  # before the transaction: a failure writes nothing
        return self._commits.submit(_Write(agent, key, content, json.dumps(metadata or {}), vec))

    def _write_batch(self, batch: list[_Write]) -> list[dict[str, Any]]:
        col = self.index.open_if_up()
        now = time.time()
        with self.db.lock:  # SQLite commit and index upsert in one hold: the index sees commit order
            with self.db.tx() as db:
                for w in batch:
                    db.execute(
                        "INSERT INTO items (agent, key, content, metadata, version, created, updated) "
                        "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT (agent, key) DO UPDATE SET "
                        "content = excluded.content, metadata = excluded.metadata, "
                        "version = items.version + 1, updated = excluded.updated",
                        (w.agent, w.key, w.content, w.metadata, now, now),
                    )
                    w.row = db.execute(
                        "SELECT * FROM items WHERE agent = ? AND key = ?", (w.agent, w.key)
                    ).fetchone()
            latest = {w.row["id"]: w for w in batch}  # the same key twice: the last write wins
            try:
                if col is None:
                    raise IndexUnavailable("the search index did not answer")
                col.upsert(
                    ids=[str(i) for i in latest],
                    embeddings=[w.vec for w in latest.values()],
                    metadatas=[
                        {"agent": w.agent, "key": w.key, "version": w.row["version"]} for w in latest.values()
                    ],
                )
            except Exception as exc:  # committed already: acknowledged; the index catches up later
                if not self.index.stale:
                    log.warning("index upsert failed (%s); reconciled when the index is back", exc)
                self.index.stale = True
        return [_item(w.row) for w in batch]

    def get(self, agent: str, key: str) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM items WHERE agent = ? AND key = ?", (agent, key))
        if not rows:
            raise NotFound(f"no item {key!r}")
        return _item(rows[0])

    def delete(self, agent: str, key: str) -> bool:
        col = self.index.open_if_up()
        with self.db.lock:
            with self.db.tx() as db:
                row = db.execute("SELECT id FROM items WHERE agent = ? AND key = ?", (agent, key)).fetchone()
                if row is None:
                    raise NotFound(f"no item {key!r}")
                db.execute("DELETE FROM items WHERE id = ?", (row["id"],))
            try:
                if col is None:
                    raise IndexUnavailable("the search index did not answer")
                col.delete(ids=[str(row["id"])])
            except Exception:  # the orphan entry is dropped by the reconcile (and never surfaces)
                self.index.stale = True
        return True

    def list(self, agent: str, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Keys (with metadata, not content) in ``agent``'s namespace starting with ``prefix``."""
        rows = self.db.query(
            "SELECT key, metadata, version, updated FROM items WHERE agent = ? AND substr(key, 1, ?) = ? "
            "ORDER BY key LIMIT ?",
            (agent, len(prefix), prefix, limit),
        )
        return [
            {"key": r["key"], "metadata": json.loads(r["metadata"]), "version": r["version"]} for r in rows
        ]

    def search(self, agent: str, query: str, k: int = 5, prefix: str = "") -> list[dict[str, Any]]:
        """The ``k`` items of ``agent`` closest to ``query`` (content from SQLite, best first).

        ``prefix`` restricts the search to keys that start with it, so one namespace can hold
        several collections (an agent's results and its worked examples) without one crowding the
        other out of the top ``k``.
        """
        col = self.index.open_if_up()
        if col is None:
            raise IndexUnavailable("the search index (chromadb) does not answer; get and list still work")
        vec = self.embedder.embed([query])[0]
        with self.db.lock:
            ids = [
                str(r[0])
                for r in self.db.conn.execute(
                    "SELECT id FROM items WHERE agent = ? AND substr(key, 1, ?) = ?", (agent, len(prefix), prefix)
                )
            ]
            if not ids:
                return []
            scope = {"ids": ids} if prefix else {}
            try:
                got = col.query(
                    query_embeddings=[vec], n_results=min(k, len(ids)), where={"agent": agent}, **scope
                )
            except Exception as exc:
                self.index.stale = True
                raise IndexUnavailable(f"the search index (chromadb) failed: {type(exc).__name__}: {exc}") from exc
        out = []
        for i, dist in zip(got["ids"][0], got["distances"][0], strict=True):
            rows = self.db.query("SELECT * FROM items WHERE id = ? AND agent = ?", (int(i), agent))
            if rows:  # an index entry without its row is an orphan: never returned
                item = _item(rows[0])
                item["score"] = 1.0 - float(dist)
                out.append(item)
        return out

    def retrieve(self, agent: str, query: str, k: int) -> list[str]:
        """The LLM engine's retrieval hook: contents of ``agent``'s top-``k`` items for ``query``."""
        if k <= 0:
            return []
        return [it["content"] for it in self.search(agent, query, k)]

    # -- syscalls ---------------------------------------------------------------------------------
    @staticmethod
    def namespace(syscall: StorageSyscall) -> str:
        return syscall.request.owner or syscall.agent

    @staticmethod
    def resources(syscall: StorageSyscall) -> list[tuple[Resource, str]]:
        """What a storage syscall touches, as (resource, operation) pairs for the access manager."""
        r = syscall.request
        ns = r.owner or syscall.agent
        match r:
            case PutItem() | DeleteItem():
                return [(Resource("storage", ns, r.key), "write")]
            case GetItem():
                return [(Resource("storage", ns, r.key), "read")]
            case ListItems() | SearchItems():
                return [(Resource("storage", ns, "*"), "read")]
            case FileWrite() | FileDelete():
                return [(Resource("file", ns, r.path), "write")]
            case FileRead():
                return [(Resource("file", ns, r.path), "read")]
            case FileList():
                return [(Resource("file", ns, "*"), "read")]
            case LogAppend():
                return [(Resource("log", ns, "*"), "write")]
            case LogRead():
                return [(Resource("log", ns, "*"), "read")]
        raise StorageError(f"unknown request {type(r).__name__}")  # pragma: no cover - pydantic forbids it

    def handle(self, syscall: StorageSyscall) -> Any:
        r = syscall.request
        ns = self.namespace(syscall)
        match r:
            case PutItem():
                size = len(r.content.encode()) + len(json.dumps(r.metadata).encode())
                with self.quota.charging(ns, self.db.item_size(ns, r.key), size, 1):
                    return self.put(ns, r.key, r.content, r.metadata)
            case GetItem():
                return self.get(ns, r.key)
            case DeleteItem():
                return self.delete(ns, r.key)
            case ListItems():
                return self.list(ns, r.prefix, r.limit)
            case SearchItems():
                return self.search(ns, r.query, r.k, r.prefix)
            case FileWrite():
                try:
                    data = base64.b64decode(r.content, validate=True) if r.encoding == "base64" else r.content.encode()
                except ValueError as exc:
                    raise StorageError(f"content is not valid base64: {exc}") from exc
                _, norm = self.files.resolve(ns, r.path)
                with self.quota.charging(ns, self.db.file_size(ns, norm), len(data), 1):
                    return self.files.write(ns, r.path, data)
            case FileRead():
                data = self.files.read(ns, r.path)
                if r.encoding == "base64":
                    return base64.b64encode(data).decode()
                try:
                    return data.decode()
                except UnicodeDecodeError as exc:
                    raise StorageError("file is not UTF-8 text: read it with encoding='base64'") from exc
            case FileList():
                return self.files.list(ns, r.prefix, r.limit)
            case FileDelete():
                return self.files.delete(ns, r.path)
            case LogAppend():
                with self.quota.charging(ns, None, len(json.dumps(r.content).encode()), 0):
                    return self.db.log_append(ns, r.event, r.content)
            case LogRead():
                return self.db.log_read(ns, r.limit)
        raise StorageError(f"unknown request {type(r).__name__}")  # pragma: no cover

    def close(self) -> None:
        with self.db.lock:
            if not self.db.close():
                return
            self.index.close()
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)
