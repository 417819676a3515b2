"""The storage manager's SQLite database: the source of truth for items, files, logs and memory swap.

``storage.db`` runs in WAL mode with ``synchronous=FULL``: a write is acknowledged only after its
transaction is on disk. Another process holding the write lock makes a write wait (``busy_timeout``),
then fail with ``StorageBusy`` having written nothing.

Tables: ``items`` (key/value text with metadata and a ``version`` the search index records),
``logs`` (agent interaction logs), ``files`` (file metadata; contents live in ``storage_files``),
``memory_swap`` (memory items the memory manager evicted or an agent persisted). This module owns
the connection, its lock and the SQL of the tables no other part of storage touches (logs, swap,
usage); items and files are written by the manager and the file store through ``tx``/``query``.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aios.kernel.storage_syscall import StorageBusy, StorageError

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


def pack_vector(v: list[float] | None) -> bytes | None:
    return None if v is None else struct.pack(f"<{len(v)}f", *v)


def unpack_vector(b: bytes | None) -> list[float] | None:
    return None if b is None else list(struct.unpack(f"<{len(b) // 4}f", b))


class SqliteStore:
    """One connection to ``storage.db``, serialised by ``lock`` (which the index shares, so an item's
    SQLite commit and its index upsert happen in one hold, and the index sees commit order)."""

    def __init__(self, path: Path):
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # acknowledged == on disk
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.executescript(_SCHEMA)
        self.closed = False

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; committed (fsynced) on exit."""
        with self.lock:
            if self.closed:
                raise StorageError("storage is closed")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # another process holds the write lock
                raise StorageBusy(f"the storage database is locked by another writer: {exc}") from exc
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self.lock:
            if self.closed:
                raise StorageError("storage is closed")
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> bool:
        """Close the connection; False if it was closed already."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            self.conn.close()
            return True

    # -- interaction logs -------------------------------------------------------------------------
    def log_append(self, agent: str, event: str, data: Any = None) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO logs (agent, time, event, data) VALUES (?, ?, ?, ?)",
                (agent, time.time(), event, json.dumps(data, default=str)),
            )
            return int(cur.lastrowid)

    def log_read(self, agent: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM logs WHERE agent = ? ORDER BY id DESC LIMIT ?", (agent, limit))
        return [
            {"id": r["id"], "time": r["time"], "event": r["event"], "data": json.loads(r["data"])}
            for r in reversed(rows)
        ]

    # -- memory swap (used by the memory manager, not a syscall) -----------------------------------
    def swap_put(
        self, agent: str, item_id: str, payload: dict, embedding: list[float] | None, size: int
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO memory_swap (agent, item_id, payload, embedding, size) VALUES (?, ?, ?, ?, ?)",
                (agent, item_id, json.dumps(payload), pack_vector(embedding), size),
            )

    def swap_get(self, agent: str, item_id: str) -> tuple[dict, list[float] | None] | None:
        rows = self.query(
            "SELECT payload, embedding FROM memory_swap WHERE agent = ? AND item_id = ?", (agent, item_id)
        )
        return None if not rows else (json.loads(rows[0]["payload"]), unpack_vector(rows[0]["embedding"]))

    def swap_delete(self, agent: str, item_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM memory_swap WHERE agent = ? AND item_id = ?", (agent, item_id))

    def swap_list(self, agent: str) -> list[tuple[str, dict, list[float] | None, int]]:
        rows = self.query("SELECT item_id, payload, embedding, size FROM memory_swap WHERE agent = ?", (agent,))
        return [
            (r["item_id"], json.loads(r["payload"]), unpack_vector(r["embedding"]), r["size"]) for r in rows
        ]

    def swap_sizes(self, agent: str) -> dict[str, int]:
        rows = self.query("SELECT item_id, size FROM memory_swap WHERE agent = ?", (agent,))
        return {r["item_id"]: r["size"] for r in rows}

    def swap_drop_agent(self, agent: str) -> int:
        with self.tx() as db:
            return db.execute("DELETE FROM memory_swap WHERE agent = ?", (agent,)).rowcount

    # -- usage (what the quota charges) -------------------------------------------------------------
    def usage(self, agent: str) -> tuple[int, int]:
        """(bytes, objects) ``agent`` stores: items (content + metadata), files and logs; items + files."""
        row = self.query(
            "SELECT (SELECT COALESCE(SUM(LENGTH(CAST(content AS BLOB)) + LENGTH(CAST(metadata AS BLOB))), 0) "
            "FROM items WHERE agent = ?1), (SELECT COALESCE(SUM(size), 0) FROM files WHERE agent = ?1), "
            "(SELECT COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM logs WHERE agent = ?1), "
            "(SELECT COUNT(*) FROM items WHERE agent = ?1), (SELECT COUNT(*) FROM files WHERE agent = ?1)",
            (agent,),
        )[0]
        return row[0] + row[1] + row[2], row[3] + row[4]

    def item_size(self, agent: str, key: str) -> int | None:
        rows = self.query(
            "SELECT LENGTH(CAST(content AS BLOB)) + LENGTH(CAST(metadata AS BLOB)) FROM items WHERE agent = ? AND key = ?",
            (agent, key),
        )
        return rows[0][0] if rows else None

    def file_size(self, agent: str, path: str) -> int | None:
        rows = self.query("SELECT size FROM files WHERE agent = ? AND path = ?", (agent, path))
        return rows[0][0] if rows else None
