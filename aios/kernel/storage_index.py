"""The search index over storage items: a chromadb collection derived from SQLite, never trusted over it.

Where it lives: ``chroma/`` under the data directory (chromadb ``PersistentClient``), or a chromadb
server when ``storage_url`` is set (``HttpClient``). It is opened lazily, at the first storage
operation that needs it, and reconciled with SQLite then: rows missing from the index or indexed
at an older ``version`` are re-indexed, and entries whose row is gone are dropped. A crash between
an item's SQLite commit and its index upsert therefore leaves no permanent inconsistency.

Faults: when the index does not answer (a chromadb server killed or restarting), ``open_if_up``
returns None and marks the index ``stale``; writes go on in SQLite, and the next ``open_if_up``
that reaches the index reconciles it first.

Embeddings come from ``embedder`` (``aios.kernel.embedding``) and are passed to chromadb
explicitly; chromadb's default embedding function is never used (it downloads a model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aios.kernel.embedding import Embedder
from aios.kernel.storage_sqlite import SqliteStore

log = logging.getLogger("aios.storage")


class VectorIndex:
    def __init__(self, db: SqliteStore, embedder: Embedder, *, path: Path, url: str | None = None):
        self.db = db
        self.embedder = embedder  # may be replaced before first use (the kernel's config does)
        self.path = path
        self.url = url
        self.stale = False  # a write missed the index (it was unreachable): reconcile when it is back
        self.last_reconcile: dict[str, int] | None = None
        self.client: Any = None
        self._collection: Any = None  # opened (and reconciled) at first use

    @property
    def collection_name(self) -> str:
        return f"aios-items-{self.embedder.name}-{self.embedder.dim}"

    def open(self) -> Any:
        """The chromadb collection, opened and reconciled with SQLite on first use."""
        with self.db.lock:
            if self._collection is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False)
                if self.url:
                    u = urlparse(self.url)
                    self.client = chromadb.HttpClient(
                        host=u.hostname or "127.0.0.1",
                        port=u.port or (443 if u.scheme == "https" else 8000),
                        ssl=u.scheme == "https",
                        settings=settings,
                    )
                else:
                    self.client = chromadb.PersistentClient(path=str(self.path), settings=settings)
                self._collection = self.client.get_or_create_collection(
                    self.collection_name, embedding_function=None, metadata={"hnsw:space": "cosine"}
                )
                self.last_reconcile = self._reconcile(self._collection)
            return self._collection

    def open_if_up(self) -> Any | None:
        """The index, reconciled first if an outage left it stale; None (and stale) while it does not
        answer. Writes use this: they are durable in SQLite whether or not the index answers."""
        try:
            col = self.open()
            if self.stale:
                with self.db.lock:
                    self.last_reconcile = self._reconcile(col)
                    self.stale = False
            return col
        except Exception as exc:  # unreachable, or failing: SQLite stays the source of truth
            if not self.stale:
                log.warning("search index unavailable (%s); writes go on, reconciled when it is back", exc)
            self.stale = True
            return None

    def _entries(self, col: Any) -> dict[str, dict]:
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
            str(r["id"]): r for r in self.db.conn.execute("SELECT id, agent, key, content, version FROM items")
        }
        entries = self._entries(col)
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
        with self.db.lock:
            if self._collection is None:
                self.open()
                return dict(self.last_reconcile or {})
            return self._reconcile(self._collection)

    def consistency(self) -> dict[str, Any]:
        """Compare SQLite and the index (for tests and ``aios`` diagnostics)."""
        with self.db.lock:
            col = self.open()
            rows = {str(r["id"]): r["version"] for r in self.db.conn.execute("SELECT id, version FROM items")}
            entries = {i: m.get("version") for i, m in self._entries(col).items()}
        return {
            "rows": len(rows),
            "indexed": len(entries),
            "missing": sorted(set(rows) - set(entries)),
            "orphans": sorted(set(entries) - set(rows)),
            "stale": sorted(i for i in rows if i in entries and entries[i] != rows[i]),
            "consistent": rows == entries,
        }

    def close(self) -> None:
        with self.db.lock:
            self._collection = None
            self.client = None
