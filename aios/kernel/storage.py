"""Storage manager: long-term, durable, per-agent storage with retrieval.

Where things live (under ``data_dir``):
- ``storage.db``: SQLite in WAL mode with ``synchronous=FULL``: a write is acknowledged only after
  its transaction is on disk. Tables: ``items`` (key/value text with metadata), ``logs`` (agent
  interaction logs), ``files`` (file metadata), ``memory_swap`` (memory items the memory manager
  evicted or an agent persisted).
- ``files/<agent dir>/...``: file contents. Paths are resolved and must stay inside the agent's
  own directory, so ``../other`` or absolute paths cannot escape it.
- ``chroma/``: the vector index (chromadb ``PersistentClient``), or a chromadb server when
  ``storage_url`` is set (``HttpClient``).

SQLite is the source of truth; chromadb is an index derived from it. Writes go SQLite first,
then the index; every row carries a ``version`` that the index records in its metadata. On open
(lazily, at the first storage operation) ``reconcile`` re-indexes rows missing from chromadb or
indexed at an older version, and drops index entries whose row is gone. A crash between the two
writes therefore loses nothing that was acknowledged and leaves no permanent inconsistency.

Faults: when the index does not answer (a chromadb server killed or restarting), writes still
commit to SQLite and are acknowledged; the index is marked stale and reconciled as soon as it
answers again, and searches fail with ``IndexUnavailable`` meanwhile (gets, lists and files keep
working). Another process holding the database's write lock makes a write wait (``busy_timeout``),
then fail with ``StorageBusy`` having written nothing.

Embeddings come from ``self.embedder`` (``aios.kernel.embedding``) and are passed to chromadb
explicitly; chromadb's default embedding function is never used (it downloads a model).

Every operation names an ``owner`` namespace (the caller's own by default). Which caller may touch
which namespace is the access manager's decision, made before the handler runs; this module then
serves strictly inside the namespace it was given: every SQL statement and every index query
filters on it, so an item id or key cannot reach into another namespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from aios.kernel.access import Resource
from aios.kernel.embedding import Embedder, make_embedder
from aios.kernel.storage_quota import QuotaExceeded as QuotaExceeded  # re-exported for callers
from aios.kernel.storage_quota import StorageQuota
from aios.kernel.syscall import Syscall

log = logging.getLogger("aios.storage")

MAX_CONTENT = 1 << 20  # 1 MiB per item or file: larger things do not belong in an agent's context
MetaValue = str | int | float | bool


class StorageError(Exception):
    """A storage request that cannot be served (typed for the caller: ``error_type``)."""

    error_type = "StorageError"


class NotFound(StorageError):
    error_type = "NotFound"


class InvalidPath(StorageError):
    error_type = "InvalidPath"


class StorageBusy(StorageError):
    """Another process holds the database's write lock past the busy timeout (nothing was written)."""

    error_type = "StorageBusy"


class IndexUnavailable(StorageError):
    """The search index (chromadb) does not answer; SQLite, the source of truth, still does."""

    error_type = "IndexUnavailable"


# ---------------------------------------------------------------------------------------------
# Syscall
# ---------------------------------------------------------------------------------------------

class _StorageOp(BaseModel):
    """Fields every storage request has. ``owner`` is the namespace (the caller's own when omitted)."""

    model_config = ConfigDict(extra="forbid")
    owner: str | None = Field(None, min_length=1, max_length=128)


_Key = Annotated[str, Field(min_length=1, max_length=512)]
_Path = Annotated[str, Field(min_length=1, max_length=1024)]
_Content = Annotated[str, Field(max_length=2 * MAX_CONTENT)]
_Prefix = Annotated[str, Field(max_length=512)]
_Limit = Annotated[int, Field(ge=1, le=10_000)]
_Encoding = Literal["utf-8", "base64"]


class PutItem(_StorageOp):
    op: Literal["put"] = "put"
    key: _Key
    content: _Content
    metadata: dict[str, MetaValue] = Field(default_factory=dict, max_length=64)


class GetItem(_StorageOp):
    op: Literal["get"] = "get"
    key: _Key


class DeleteItem(_StorageOp):
    op: Literal["delete"] = "delete"
    key: _Key


class ListItems(_StorageOp):
    op: Literal["list"] = "list"
    prefix: _Prefix = ""
    limit: _Limit = 100


class SearchItems(_StorageOp):
    op: Literal["search"] = "search"
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(5, ge=1, le=50)
    prefix: _Prefix = ""


class FileWrite(_StorageOp):
    op: Literal["file_write"] = "file_write"
    path: _Path
    content: _Content
    encoding: _Encoding = "utf-8"


class FileRead(_StorageOp):
    op: Literal["file_read"] = "file_read"
    path: _Path
    encoding: _Encoding = "utf-8"


class FileList(_StorageOp):
    op: Literal["file_list"] = "file_list"
    prefix: _Prefix = ""
    limit: _Limit = 100


class FileDelete(_StorageOp):
    op: Literal["file_delete"] = "file_delete"
    path: _Path


class LogAppend(_StorageOp):
    op: Literal["log_append"] = "log_append"
    content: _Content
    event: str = Field("note", min_length=1, max_length=128)


class LogRead(_StorageOp):
    op: Literal["log_read"] = "log_read"
    limit: _Limit = 100


StorageRequest = Annotated[
    PutItem | GetItem | DeleteItem | ListItems | SearchItems | FileWrite | FileRead | FileList | FileDelete
    | LogAppend | LogRead,
    Field(discriminator="op"),
]  # fmt: skip


class StorageSyscall(Syscall):
    kind: ClassVar[str] = "storage"
    request: StorageRequest


# ---------------------------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL, key TEXT NOT NULL, content TEXT NOT NULL, metadata TEXT NOT NULL,
    version INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    UNIQUE (agent, key));
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, time REAL NOT NULL,
    event TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_agent ON logs (agent, id);
CREATE TABLE IF NOT EXISTS files (
    agent TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (agent, path));
CREATE TABLE IF NOT EXISTS memory_swap (
    agent TEXT NOT NULL, item_id TEXT NOT NULL, payload TEXT NOT NULL, embedding BLOB,
    size INTEGER NOT NULL, PRIMARY KEY (agent, item_id));
"""


def _agent_dirname(agent: str) -> str:
    """A filesystem-safe, collision-free directory name for any agent name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent)[:48].lstrip(".") or "agent"
    return f"{safe}-{hashlib.sha256(agent.encode()).hexdigest()[:12]}"


def pack_vector(v: list[float] | None) -> bytes | None:
    return None if v is None else struct.pack(f"<{len(v)}f", *v)


def unpack_vector(b: bytes | None) -> list[float] | None:
    return None if b is None else list(struct.unpack(f"<{len(b) // 4}f", b))


@dataclass
class _Write:
    """One queued put: in by the caller, out (``item`` or ``error``) from the batch writer."""

    agent: str
    key: str
    content: str
    metadata: str
    vec: list[float]
    row: Any = None
    item: dict[str, Any] | None = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.item


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
        self.files_root = (self.data_dir / "files").resolve()
        self.files_root.mkdir(exist_ok=True)
        self.url = url
        self.embedder: Embedder = embedder or make_embedder("minilm")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "storage.db", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # acknowledged == on disk
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._collection: Any = None  # opened (and reconciled) at first use
        self._index_stale = False  # a write missed the index (it was unreachable): reconcile when it is back
        self._client: Any = None
        self.last_reconcile: dict[str, int] | None = None
        self._wcv = threading.Condition()  # group commit of puts (see ``put``)
        self._wqueue: list[_Write] = []
        self._writing = False
        self._closed = False
        self.quota = StorageQuota(self.usage, max_bytes=quota_bytes, max_objects=quota_objects)

    # -- plumbing ---------------------------------------------------------------------------------
    @contextmanager
    def _tx(self):
        """One write transaction under the manager's lock; committed (fsynced) on exit."""
        with self._lock:
            if self._closed:
                raise StorageError("storage is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # another process holds the write lock
                raise StorageBusy(f"the storage database is locked by another writer: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._closed:
                raise StorageError("storage is closed")
            return self._db.execute(sql, args).fetchall()

    @property
    def collection_name(self) -> str:
        return f"aios-items-{self.embedder.name}-{self.embedder.dim}"

    def _index(self) -> Any:
        """The chromadb collection, opened and reconciled with SQLite on first use."""
        with self._lock:
            if self._collection is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False)
                if self.url:
                    u = urlparse(self.url)
                    self._client = chromadb.HttpClient(
                        host=u.hostname or "127.0.0.1",
                        port=u.port or (443 if u.scheme == "https" else 8000),
                        ssl=u.scheme == "https",
                        settings=settings,
                    )
                else:
                    self._client = chromadb.PersistentClient(
                        path=str(self.data_dir / "chroma"), settings=settings
                    )
                self._collection = self._client.get_or_create_collection(
                    self.collection_name, embedding_function=None, metadata={"hnsw:space": "cosine"}
                )
                self.last_reconcile = self._reconcile(self._collection)
            return self._collection

    def _index_if_up(self) -> Any | None:
        """The index, reconciled first if an outage left it stale; None (and stale) while it does not
        answer. Writes use this: they are durable in SQLite whether or not the index answers."""
        try:
            col = self._index()
            if self._index_stale:
                with self._lock:
                    self.last_reconcile = self._reconcile(col)
                    self._index_stale = False
            return col
        except Exception as exc:  # unreachable, or failing: SQLite stays the source of truth
            if not self._index_stale:
                log.warning("search index unavailable (%s); writes go on, reconciled when it is back", exc)
            self._index_stale = True
            return None

    def _index_entries(self, col: Any) -> dict[str, dict]:
        out: dict[str, dict] = {}
        offset, page = 0, 1000
        while True:
            got = col.get(include=["metadatas"], limit=page, offset=offset)
            for i, m in zip(got["ids"], got["metadatas"], strict=True):
                out[i] = m or {}
            if len(got["ids"]) < page:
                return out
            offset += page

    def _reconcile(self, col: Any) -> dict[str, int]:
        """Make the index match SQLite: re-index missing/stale rows, drop orphans."""
        rows = {
            str(r["id"]): r for r in self._db.execute("SELECT id, agent, key, content, version FROM items")
        }
        entries = self._index_entries(col)
        orphans = [i for i in entries if i not in rows]
        stale = [r for i, r in rows.items() if entries.get(i, {}).get("version") != r["version"]]
        if orphans:
            col.delete(ids=orphans)
        for start in range(0, len(stale), 256):
            batch = stale[start : start + 256]
            vecs = self.embedder.embed([r["content"] for r in batch])
            col.upsert(
                ids=[str(r["id"]) for r in batch],
                embeddings=vecs,
                metadatas=[{"agent": r["agent"], "key": r["key"], "version": r["version"]} for r in batch],
            )
        return {"reindexed": len(stale), "orphans_dropped": len(orphans)}

    def reconcile(self) -> dict[str, int]:
        """Run reconciliation now (it also runs once, implicitly, when the index is first opened)."""
        with self._lock:
            if self._collection is None:
                self._index()
                return dict(self.last_reconcile or {})
            return self._reconcile(self._collection)

    def consistency(self) -> dict[str, Any]:
        """Compare SQLite and the index (for tests and ``aios`` diagnostics)."""
        with self._lock:
            col = self._index()
            rows = {str(r["id"]): r["version"] for r in self._db.execute("SELECT id, version FROM items")}
            entries = {i: m.get("version") for i, m in self._index_entries(col).items()}
        return {
            "rows": len(rows),
            "indexed": len(entries),
            "missing": sorted(set(rows) - set(entries)),
            "orphans": sorted(set(entries) - set(rows)),
            "stale": sorted(i for i in rows if i in entries and entries[i] != rows[i]),
            "consistent": rows == entries,
        }

    # -- items ------------------------------------------------------------------------------------
    @staticmethod
    def _item(r: sqlite3.Row) -> dict[str, Any]:
        return {
            "key": r["key"],
            "content": r["content"],
            "metadata": json.loads(r["metadata"]),
            "version": r["version"],
            "created": r["created"],
            "updated": r["updated"],
        }

    def put(
        self, agent: str, key: str, content: str, metadata: dict[str, MetaValue] | None = None
    ) -> dict[str, Any]:
        """Insert or replace ``key``; returns once SQLite has it on disk and the index has it (or,
        when the index does not answer, is marked stale: see the module docstring on faults).

        Group commit: puts that arrive while another batch is being written wait and are then
        written together, in one transaction (one fsync) and one index upsert. Each caller is
        acknowledged only after its batch is durable and indexed; a failed batch fails all of
        its callers and writes none of them.
        """
        if len(content.encode()) > MAX_CONTENT:
            raise StorageError(f"item is larger than {MAX_CONTENT} bytes")
        col = self._index_if_up()
        vec = self.embedder.embed([content])[0]  # before the transaction: a failure writes nothing
        me = _Write(agent, key, content, json.dumps(metadata or {}), vec)
        with self._wcv:
            self._wqueue.append(me)
            while not me.done and self._writing:
                self._wcv.wait()
            if me.done:
                return me.result()
            self._writing = True  # this caller writes everything queued so far, itself included
            batch, self._wqueue = self._wqueue, []
        try:
            self._write_batch(col, batch)
        except BaseException as exc:
            for w in batch:
                w.error = exc
        finally:
            with self._wcv:
                for w in batch:
                    w.done = True
                self._writing = False
                self._wcv.notify_all()
        return me.result()

    def _write_batch(self, col: Any, batch: list[_Write]) -> None:
        now = time.time()
        with self._lock:  # SQLite commit and index upsert in one hold: the index sees commit order
            with self._tx() as db:
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
                if not self._index_stale:
                    log.warning("index upsert failed (%s); reconciled when the index is back", exc)
                self._index_stale = True
        for w in batch:
            w.item = self._item(w.row)

    def get(self, agent: str, key: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM items WHERE agent = ? AND key = ?", (agent, key))
        if not rows:
            raise NotFound(f"no item {key!r}")
        return self._item(rows[0])

    def delete(self, agent: str, key: str) -> bool:
        col = self._index_if_up()
        with self._lock:
            with self._tx() as db:
                row = db.execute("SELECT id FROM items WHERE agent = ? AND key = ?", (agent, key)).fetchone()
                if row is None:
                    raise NotFound(f"no item {key!r}")
                db.execute("DELETE FROM items WHERE id = ?", (row["id"],))
            try:
                if col is None:
                    raise IndexUnavailable("the search index did not answer")
                col.delete(ids=[str(row["id"])])
            except Exception:  # the orphan entry is dropped by the reconcile (and never surfaces)
                self._index_stale = True
        return True

    def list(self, agent: str, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Keys (with metadata, not content) in ``agent``'s namespace starting with ``prefix``."""
        rows = self._query(
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
        col = self._index_if_up()
        if col is None:
            raise IndexUnavailable("the search index (chromadb) does not answer; get and list still work")
        vec = self.embedder.embed([query])[0]
        with self._lock:
            ids = [
                str(r[0])
                for r in self._db.execute(
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
                self._index_stale = True
                raise IndexUnavailable(f"the search index (chromadb) failed: {type(exc).__name__}: {exc}") from exc
        out = []
        for i, dist in zip(got["ids"][0], got["distances"][0], strict=True):
            rows = self._query("SELECT * FROM items WHERE id = ? AND agent = ?", (int(i), agent))
            if rows:  # an index entry without its row is an orphan: never returned
                item = self._item(rows[0])
                item["score"] = 1.0 - float(dist)
                out.append(item)
        return out

    def retrieve(self, agent: str, query: str, k: int) -> list[str]:
        """The LLM engine's retrieval hook: contents of ``agent``'s top-``k`` items for ``query``."""
        if k <= 0:
            return []
        return [it["content"] for it in self.search(agent, query, k)]

    # -- files ------------------------------------------------------------------------------------
    def agent_dir(self, agent: str) -> Path:
        return self.files_root / _agent_dirname(agent)

    def _resolve(self, agent: str, path: str) -> tuple[Path, str]:
        """Map an agent-relative path to a real path that provably stays inside its directory."""
        if "\x00" in path or "\\" in path:
            raise InvalidPath("path contains a NUL byte or a backslash")
        p = PurePosixPath(path)
        if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
            raise InvalidPath(f"path {path!r} must be relative, without '..'")
        norm = str(p)
        if norm in (".",) or p.parts[0] == ".":
            norm = str(PurePosixPath(*[q for q in p.parts if q != "."]))
            if not norm or norm == ".":
                raise InvalidPath(f"path {path!r} names no file")
        root = self.agent_dir(agent)
        real = (root / norm).resolve()
        if not real.is_relative_to(root.resolve()) or real == root.resolve():
            raise InvalidPath(f"path {path!r} leaves the agent's directory")
        return real, norm

    def file_write(self, agent: str, path: str, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_CONTENT:
            raise StorageError(f"file is larger than {MAX_CONTENT} bytes")
        real, norm = self._resolve(agent, path)
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, real)  # atomic: readers see the old or the new file, never half
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        now = time.time()
        digest = hashlib.sha256(data).hexdigest()
        with self._tx() as db:
            db.execute(
                "INSERT INTO files (agent, path, size, sha256, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (agent, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, "
                "updated = excluded.updated",
                (agent, norm, len(data), digest, now, now),
            )
        return {"path": norm, "size": len(data), "sha256": digest}

    def file_read(self, agent: str, path: str) -> bytes:
        real, norm = self._resolve(agent, path)
        if (
            not self._query("SELECT 1 FROM files WHERE agent = ? AND path = ?", (agent, norm))
            or not real.is_file()
        ):
            raise NotFound(f"no file {norm!r}")
        return real.read_bytes()

    def file_list(self, agent: str, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT path, size, sha256, updated FROM files WHERE agent = ? AND substr(path, 1, ?) = ? ORDER BY path LIMIT ?",
            (agent, len(prefix), prefix, limit),
        )
        return [dict(r) for r in rows]

    def file_delete(self, agent: str, path: str) -> bool:
        real, norm = self._resolve(agent, path)
        with self._tx() as db:
            if db.execute("DELETE FROM files WHERE agent = ? AND path = ?", (agent, norm)).rowcount == 0:
                raise NotFound(f"no file {norm!r}")
        real.unlink(missing_ok=True)
        return True

    # -- interaction logs -------------------------------------------------------------------------
    def log_append(self, agent: str, event: str, data: Any = None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO logs (agent, time, event, data) VALUES (?, ?, ?, ?)",
                (agent, time.time(), event, json.dumps(data, default=str)),
            )
            return int(cur.lastrowid)

    def log_read(self, agent: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM logs WHERE agent = ? ORDER BY id DESC LIMIT ?", (agent, limit))
        return [
            {"id": r["id"], "time": r["time"], "event": r["event"], "data": json.loads(r["data"])}
            for r in reversed(rows)
        ]

    # -- memory swap (used by the memory manager, not a syscall) -----------------------------------
    def swap_put(
        self, agent: str, item_id: str, payload: dict, embedding: list[float] | None, size: int
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO memory_swap (agent, item_id, payload, embedding, size) VALUES (?, ?, ?, ?, ?)",
                (agent, item_id, json.dumps(payload), pack_vector(embedding), size),
            )

    def swap_get(self, agent: str, item_id: str) -> tuple[dict, list[float] | None] | None:
        rows = self._query(
            "SELECT payload, embedding FROM memory_swap WHERE agent = ? AND item_id = ?", (agent, item_id)
        )
        return None if not rows else (json.loads(rows[0]["payload"]), unpack_vector(rows[0]["embedding"]))

    def swap_delete(self, agent: str, item_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM memory_swap WHERE agent = ? AND item_id = ?", (agent, item_id))

    def swap_list(self, agent: str) -> list[tuple[str, dict, list[float] | None, int]]:
        rows = self._query(
            "SELECT item_id, payload, embedding, size FROM memory_swap WHERE agent = ?", (agent,)
        )
        return [
            (r["item_id"], json.loads(r["payload"]), unpack_vector(r["embedding"]), r["size"]) for r in rows
        ]

    def swap_sizes(self, agent: str) -> dict[str, int]:
        rows = self._query("SELECT item_id, size FROM memory_swap WHERE agent = ?", (agent,))
        return {r["item_id"]: r["size"] for r in rows}

    def swap_drop_agent(self, agent: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM memory_swap WHERE agent = ?", (agent,)).rowcount

    # -- quotas -----------------------------------------------------------------------------------
    def usage(self, agent: str) -> tuple[int, int]:
        """(bytes, objects) ``agent`` stores: items (content + metadata), files and logs; items + files."""
        row = self._query(
            "SELECT (SELECT COALESCE(SUM(LENGTH(CAST(content AS BLOB)) + LENGTH(CAST(metadata AS BLOB))), 0) "
            "FROM items WHERE agent = ?1), (SELECT COALESCE(SUM(size), 0) FROM files WHERE agent = ?1), "
            "(SELECT COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM logs WHERE agent = ?1), "
            "(SELECT COUNT(*) FROM items WHERE agent = ?1), (SELECT COUNT(*) FROM files WHERE agent = ?1)",
            (agent,),
        )[0]
        return row[0] + row[1] + row[2], row[3] + row[4]

    def _item_size(self, agent: str, key: str) -> int | None:
        rows = self._query(
            "SELECT LENGTH(CAST(content AS BLOB)) + LENGTH(CAST(metadata AS BLOB)) FROM items WHERE agent = ? AND key = ?",
            (agent, key),
        )
        return rows[0][0] if rows else None

    def _file_size(self, agent: str, path: str) -> int | None:
        rows = self._query("SELECT size FROM files WHERE agent = ? AND path = ?", (agent, path))
        return rows[0][0] if rows else None

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
                with self.quota.charging(ns, self._item_size(ns, r.key), size, 1):
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
                _, norm = self._resolve(ns, r.path)
                with self.quota.charging(ns, self._file_size(ns, norm), len(data), 1):
                    return self.file_write(ns, r.path, data)
            case FileRead():
                data = self.file_read(ns, r.path)
                if r.encoding == "base64":
                    return base64.b64encode(data).decode()
                try:
                    return data.decode()
                except UnicodeDecodeError as exc:
                    raise StorageError("file is not UTF-8 text: read it with encoding='base64'") from exc
            case FileList():
                return self.file_list(ns, r.prefix, r.limit)
            case FileDelete():
                return self.file_delete(ns, r.path)
            case LogAppend():
                with self.quota.charging(ns, None, len(json.dumps(r.content).encode()), 0):
                    return self.log_append(ns, r.event, r.content)
            case LogRead():
                return self.log_read(ns, r.limit)
        raise StorageError(f"unknown request {type(r).__name__}")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._collection = None
            self._client = None
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)
