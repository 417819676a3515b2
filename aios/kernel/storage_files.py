"""Agent files: contents under ``files/<agent dir>/...``, metadata in SQLite's ``files`` table.

Why a path cannot escape: every agent-relative path is normalised and resolved, and must stay
inside the agent's own directory, so ``../other``, absolute paths, NUL bytes, backslashes and
symlinks out are all refused (``InvalidPath``). Writes are atomic (temp file, fsync, rename):
a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from aios.kernel.storage_sqlite import SqliteStore
from aios.kernel.storage_syscall import MAX_CONTENT, InvalidPath, NotFound, StorageError


def agent_dirname(agent: str) -> str:
    """A filesystem-safe, collision-free directory name for any agent name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", agent)[:48].lstrip(".") or "agent"
    return f"{safe}-{hashlib.sha256(agent.encode()).hexdigest()[:12]}"


class FileStore:
    def __init__(self, db: SqliteStore, root: Path):
        self.db = db
        self.root = root.resolve()
        self.root.mkdir(exist_ok=True)

    def agent_dir(self, agent: str) -> Path:
        return self.root / agent_dirname(agent)

    def resolve(self, agent: str, path: str) -> tuple[Path, str]:
        """Map an agent-relative path to (real path that provably stays inside its directory,
        normalised relative path)."""
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

    def write(self, agent: str, path: str, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_CONTENT:
            raise StorageError(f"file is larger than {MAX_CONTENT} bytes")
        real, norm = self.resolve(agent, path)
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
        with self.db.tx() as db:
            db.execute(
                "INSERT INTO files (agent, path, size, sha256, created, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (agent, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, "
                "updated = excluded.updated",
                (agent, norm, len(data), digest, now, now),
            )
        return {"path": norm, "size": len(data), "sha256": digest}

    def read(self, agent: str, path: str) -> bytes:
        real, norm = self.resolve(agent, path)
        if (
            not self.db.query("SELECT 1 FROM files WHERE agent = ? AND path = ?", (agent, norm))
            or not real.is_file()
        ):
            raise NotFound(f"no file {norm!r}")
        return real.read_bytes()

    def list(self, agent: str, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT path, size, sha256, updated FROM files WHERE agent = ? AND substr(path, 1, ?) = ? ORDER BY path LIMIT ?",
            (agent, len(prefix), prefix, limit),
        )
        return [dict(r) for r in rows]

    def delete(self, agent: str, path: str) -> bool:
        real, norm = self.resolve(agent, path)
        with self.db.tx() as db:
            if db.execute("DELETE FROM files WHERE agent = ? AND path = ?", (agent, norm)).rowcount == 0:
                raise NotFound(f"no file {norm!r}")
        real.unlink(missing_ok=True)
        return True
