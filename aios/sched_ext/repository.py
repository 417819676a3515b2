"""Scheduler policy repository: programs, their documentation, and every measured result.

Why: the sched-agent should start from what already worked. The repository keeps each scheduler's
source, description, tags, tunables and goal, plus every measurement (workload, metrics, date,
kernel) in SQLite — the source of truth — and indexes descriptions and workload profiles in
chromadb for semantic search ("a scheduler for a latency-sensitive server next to batch jobs").
Measured performance is queried in SQL ("best for workload X by metric Y").

Embeddings come from ``aios.kernel.embedding`` (offline all-MiniLM-L6-v2 by default, or the
hashing embedder in tests) and are passed to chromadb explicitly: chromadb's default embedding
function downloads a model and must never run. The chroma index is derived data: it is rebuilt
from SQLite when missing or stale.

On first open an empty repository is seeded from ``schedulers/*.bpf.c`` + their ``NAME.json``
sidecars.

Public API::

    repo = PolicyRepository(path=None, embedder=None, seed=True)
    repo.add(entry: PolicyEntry) ; repo.get(name) -> PolicyEntry ; repo.list(tag=None) -> list[PolicyEntry]
    repo.search(text, k=5, tag=None) -> list[SearchHit]            # semantic, description + profiles
    repo.search_by_profile(profile, k=5) -> list[SearchHit]        # a WorkloadProfile or its text
    repo.record_result(result: MeasureResult | ResultRecord) -> int
    repo.results(scheduler=None, workload=None) -> list[ResultRecord]
    repo.best_for(workload, metric=None, k=5) -> list[RankedPolicy] # by measured improvement
    repo.import_benchmark(path) -> int             # results of benchmarks/sched_seeds.py
    load_upstream_entries(scx_dir) -> list[PolicyEntry]   # the kernel's example schedulers (origin "upstream")
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

SEED_DIR = Path(__file__).parent / "schedulers"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedulers (
    name TEXT PRIMARY KEY, ops_name TEXT, description TEXT NOT NULL, source TEXT NOT NULL,
    source_sha TEXT NOT NULL, tags TEXT NOT NULL, tunables TEXT NOT NULL, goal TEXT,
    blocks TEXT, origin TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scheduler TEXT NOT NULL, workload TEXT NOT NULL,
    goal TEXT, primary_metric TEXT, improvement REAL, metrics TEXT NOT NULL, tunables TEXT,
    profile TEXT, reps INTEGER, stayed_enabled INTEGER, kernel TEXT, accel TEXT, date TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_wl ON results(workload, scheduler);
"""


class Tunable(BaseModel):
    default: float
    min: float | None = None
    max: float | None = None
    description: str = ""


class PolicyEntry(BaseModel):
    """One scheduler program with its documentation."""

    name: str = Field(description="repository key (file stem), unique")
    ops_name: str = Field("", description="sched_ext_ops .name the kernel reports")
    description: str
    source: str = Field(description="BPF C source text")
    tags: list[str] = Field(default_factory=list)
    tunables: dict[str, Tunable] = Field(default_factory=dict)
    goal: str | None = None
    blocks: dict[str, Any] | None = Field(None, description="compose-mode building blocks, if known")
    origin: str = "seed"
    created: str = ""

    @property
    def source_sha(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


class ResultRecord(BaseModel):
    """One measurement of a scheduler on a workload (metrics keyed by name: baseline/candidate means)."""

    id: int | None = None
    scheduler: str
    workload: str
    goal: str | None = None
    primary_metric: str | None = None
    improvement: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    tunables: dict[str, Any] = Field(default_factory=dict)
    profile: str = ""
    reps: int = 0
    stayed_enabled: bool = True
    kernel: str = ""
    accel: str = ""
    date: str = ""


class SearchHit(BaseModel):
    name: str
    score: float = Field(description="cosine similarity (higher is closer)")
    description: str
    tags: list[str]
    goal: str | None = None


class RankedPolicy(BaseModel):
    name: str
    workload: str
    metric: str
    improvement: float = Field(description="best mean improvement over EEVDF seen (>1 better)")
    runs: int
    last_date: str


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _default_path() -> Path:
    from .setup import default_cache_dir

    return default_cache_dir() / "repository"


def load_seed_entries(seed_dir: Path = SEED_DIR) -> list[PolicyEntry]:
    """PolicyEntry for every ``NAME.bpf.c`` that has a ``NAME.json`` sidecar."""
    out = []
    for src in sorted(seed_dir.glob("*.bpf.c")):
        side = src.with_name(src.name.removesuffix(".bpf.c") + ".json")
        if not side.is_file():
            continue
        meta = json.loads(side.read_text())
        out.append(PolicyEntry(
            name=src.name.removesuffix(".bpf.c"), ops_name=meta.get("name", ""), description=meta["description"],
            source=src.read_text(), tags=meta.get("tags", []),
            tunables={k: Tunable(**v) for k, v in meta.get("tunables", {}).items()}, goal=meta.get("goal"),
            blocks=meta.get("blocks"), origin="seed", created=_now()))
    return out


UPSTREAM_DOCS = SEED_DIR / "upstream.json"


def load_upstream_entries(scx_dir: Path, tunables: dict[str, dict[str, int]] | None = None,
                          docs: Path = UPSTREAM_DOCS) -> list[PolicyEntry]:
    """PolicyEntry for each kernel example scheduler in ``scx_dir`` that ``upstream.json`` documents.

    ``scx_dir`` is the kernel's ``tools/sched_ext`` fetched by set-up (``SetupInfo.scx_dir``);
    ``tunables`` (scheduler → {name: value}) are what its loader sets before load for the VM
    (``prepare.plan_load``), recorded as the entry's tunables.  Origin ``upstream``.
    """
    meta = {k: v for k, v in json.loads(docs.read_text()).items() if not k.startswith("_")}
    out = []
    for name, m in meta.items():
        src = Path(scx_dir) / f"{name}.bpf.c"
        if not src.is_file():
            continue
        tun = {k: Tunable(default=float(v), description="set before load as its upstream loader does")
               for k, v in (tunables or {}).get(name, {}).items()}
        out.append(PolicyEntry(name=name, ops_name=name.removeprefix("scx_"), description=m["description"],
                               source=src.read_text(), tags=m.get("tags", ["upstream"]), tunables=tun,
                               goal=m.get("goal"), origin="upstream", created=_now()))
    return out


class PolicyRepository:
    """SQLite + chromadb store of scheduler programs and their measured results."""

    COLLECTION = "aios-sched-policies"

    def __init__(self, path: Path | str | None = None, embedder: Any = None, seed: bool = True) -> None:
        self.path = Path(path) if path else _default_path()
        self.path.mkdir(parents=True, exist_ok=True)
        if embedder is None:
            from ..kernel.embedding import MiniLMEmbedder

            embedder = MiniLMEmbedder()
        self.embedder = embedder
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path / "policies.sqlite3", check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._db:
            self._db.executescript(_SCHEMA)
        self._col: Any = None
        if seed and not self._db.execute("SELECT 1 FROM schedulers LIMIT 1").fetchone():
            for e in load_seed_entries():
                self.add(e, index=False)

    # ------------------------------------------------------------------ index
    def _collection(self) -> Any:
        """The chromadb collection, rebuilt from SQLite when it lags behind (derived data)."""
        with self._lock:
            if self._col is None:
                import chromadb
                from chromadb.config import Settings

                client = chromadb.PersistentClient(path=str(self.path / "chroma"),
                                                   settings=Settings(anonymized_telemetry=False))
                name = f"{self.COLLECTION}-{getattr(self.embedder, 'name', 'emb')}-{self.embedder.dim}"
                name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
                self._col = client.get_or_create_collection(name, embedding_function=None,
                                                            metadata={"hnsw:space": "cosine"})
                self._reindex_missing()
            return self._col

    def _doc(self, name: str) -> str:
        """Text that represents a scheduler: its description, tags, goal and measured workloads."""
        row = self._db.execute("SELECT * FROM schedulers WHERE name=?", (name,)).fetchone()
        wins = self._db.execute(
            "SELECT workload, goal, MAX(improvement) AS imp, profile FROM results WHERE scheduler=? "
            "GROUP BY workload ORDER BY imp DESC LIMIT 6", (name,)).fetchall()
        parts = [row["description"], "tags: " + ", ".join(json.loads(row["tags"])),
                 f"goal: {row['goal'] or 'general'}"]
        for w in wins:
            if w["imp"] is not None and w["imp"] > 1.0:
                parts.append(f"good for {w['workload']} ({w['goal']}): {w['imp']:.2f}x vs EEVDF. {w['profile'] or ''}")
        return "\n".join(parts)

    def _index(self, names: list[str]) -> None:
        if not names:
            return
        col = self._col
        docs = [self._doc(n) for n in names]
        vecs = self.embedder.embed(docs)
        metas = []
        for n in names:
            row = self._db.execute("SELECT tags, goal, source_sha FROM schedulers WHERE name=?", (n,)).fetchone()
            metas.append({"tags": ",".join(json.loads(row["tags"])), "goal": row["goal"] or "",
                          "sha": row["source_sha"], "nres": self._nresults(n)})
        col.upsert(ids=names, embeddings=vecs, documents=docs, metadatas=metas)

    def _nresults(self, name: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results WHERE scheduler=?", (name,)).fetchone()[0])

    def _reindex_missing(self) -> None:
        names = [r["name"] for r in self._db.execute("SELECT name, source_sha FROM schedulers")]
        have = self._col.get(ids=names, include=["metadatas"]) if names else {"ids": [], "metadatas": []}
        current = {i: m for i, m in zip(have["ids"], have["metadatas"] or [], strict=False)}
        stale = []
        for n in names:
            m = current.get(n)
            row = self._db.execute("SELECT source_sha FROM schedulers WHERE name=?", (n,)).fetchone()
            if m is None or m.get("sha") != row["source_sha"] or m.get("nres") != self._nresults(n):
                stale.append(n)
        self._index(stale)

    # ------------------------------------------------------------------ programs
    def add(self, entry: PolicyEntry, index: bool = True) -> None:
        """Insert or replace a scheduler (results recorded for it are kept)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO schedulers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (entry.name, entry.ops_name, entry.description, entry.source, entry.source_sha,
                 json.dumps(entry.tags), json.dumps({k: v.model_dump() for k, v in entry.tunables.items()}),
                 entry.goal, json.dumps(entry.blocks) if entry.blocks is not None else None, entry.origin,
                 entry.created or _now()))
        if index and self._col is not None:
            self._index([entry.name])

    def _entry(self, row: sqlite3.Row) -> PolicyEntry:
        return PolicyEntry(
            name=row["name"], ops_name=row["ops_name"] or "", description=row["description"], source=row["source"],
            tags=json.loads(row["tags"]), tunables={k: Tunable(**v) for k, v in json.loads(row["tunables"]).items()},
            goal=row["goal"], blocks=json.loads(row["blocks"]) if row["blocks"] else None, origin=row["origin"],
            created=row["created"])

    def get(self, name: str) -> PolicyEntry:
        row = self._db.execute("SELECT * FROM schedulers WHERE name=?", (name,)).fetchone()
        if row is None:
            raise KeyError(f"no scheduler {name!r} in the repository")
        return self._entry(row)

    def list(self, tag: str | None = None) -> list[PolicyEntry]:
        rows = self._db.execute("SELECT * FROM schedulers ORDER BY name").fetchall()
        out = [self._entry(r) for r in rows]
        return [e for e in out if tag is None or tag in e.tags]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM schedulers").fetchone()[0])

    # ------------------------------------------------------------------ search
    def search(self, text: str, k: int = 5, tag: str | None = None) -> list[SearchHit]:
        """Schedulers whose description / measured workloads are closest in meaning to ``text``."""
        col = self._collection()
        with self._lock:
            self._reindex_missing()
        n = col.count()
        if n == 0:
            return []
        q = self.embedder.embed([text])[0]
        res = col.query(query_embeddings=[q], n_results=min(n, max(k * 3, k)), include=["distances"])
        hits = []
        for name, dist in zip(res["ids"][0], res["distances"][0], strict=False):
            try:
                e = self.get(name)
            except KeyError:
                continue
            if tag and tag not in e.tags:
                continue
            hits.append(SearchHit(name=name, score=1.0 - float(dist), description=e.description, tags=e.tags,
                                  goal=e.goal))
        return hits[:k]

    def search_by_profile(self, profile: Any, k: int = 5) -> list[SearchHit]:
        """Search with a workload profile (``profile.py`` model with ``to_text()``) or its text."""
        text = profile.to_text() if hasattr(profile, "to_text") else str(profile)
        return self.search(text, k=k)

    # ------------------------------------------------------------------ results
    def record_result(self, result: Any, tunables: dict[str, Any] | None = None, profile: str = "") -> int:
        """Store a ``MeasureResult`` (or ``ResultRecord``); returns the row id."""
        if isinstance(result, ResultRecord):
            rec = result
        else:
            metrics = {name: {"baseline_mean": m.baseline.mean, "candidate_mean": m.candidate.mean,
                              "improvement": m.improvement, "ratio": m.ratio, "unit": m.unit, "better": m.better,
                              "paired_min": m.paired_improvement.min, "paired_max": m.paired_improvement.max}
                       for name, m in result.metrics.items()}
            rec = ResultRecord(scheduler=result.scheduler, workload=result.workload, goal=result.goal,
                               primary_metric=result.primary_metric, improvement=result.improvement,
                               metrics=metrics, tunables=tunables or {}, profile=profile, reps=result.reps,
                               stayed_enabled=result.stayed_enabled, kernel=result.kernel, accel=result.accel,
                               date=result.date or _now())
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO results (scheduler, workload, goal, primary_metric, improvement, metrics, tunables, "
                "profile, reps, stayed_enabled, kernel, accel, date) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.scheduler, rec.workload, rec.goal, rec.primary_metric, rec.improvement, json.dumps(rec.metrics),
                 json.dumps(rec.tunables), rec.profile, rec.reps, int(rec.stayed_enabled), rec.kernel, rec.accel,
                 rec.date or _now()))
            rid = int(cur.lastrowid)
        if self._col is not None and self._db.execute(
                "SELECT 1 FROM schedulers WHERE name=?", (rec.scheduler,)).fetchone():
            self._index([rec.scheduler])
        return rid

    def results(self, scheduler: str | None = None, workload: str | None = None) -> list[ResultRecord]:
        sql, args = "SELECT * FROM results WHERE 1=1", []
        if scheduler:
            sql += " AND scheduler=?"
            args.append(scheduler)
        if workload:
            sql += " AND workload=?"
            args.append(workload)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [ResultRecord(id=r["id"], scheduler=r["scheduler"], workload=r["workload"], goal=r["goal"],
                             primary_metric=r["primary_metric"], improvement=r["improvement"],
                             metrics=json.loads(r["metrics"]), tunables=json.loads(r["tunables"] or "{}"),
                             profile=r["profile"] or "", reps=r["reps"] or 0, stayed_enabled=bool(r["stayed_enabled"]),
                             kernel=r["kernel"] or "", accel=r["accel"] or "", date=r["date"]) for r in rows]

    def best_for(self, workload: str, metric: str | None = None, k: int = 5) -> list[RankedPolicy]:
        """Schedulers ranked by their best measured improvement over EEVDF on ``workload``.

        ``metric`` defaults to each result's primary metric; results where the scheduler was ejected
        do not count.
        """
        ranked: dict[str, RankedPolicy] = {}
        for r in self.results(workload=workload):
            if not r.stayed_enabled:
                continue
            m = metric or r.primary_metric
            imp = r.improvement if metric is None else (r.metrics.get(m) or {}).get("improvement")
            if imp is None or imp != imp:  # missing or NaN
                continue
            cur = ranked.get(r.scheduler)
            if cur is None or imp > cur.improvement:
                ranked[r.scheduler] = RankedPolicy(name=r.scheduler, workload=workload, metric=m or "",
                                                   improvement=float(imp),
                                                   runs=(cur.runs if cur else 0) + 1, last_date=r.date)
            else:
                cur.runs += 1
        return sorted(ranked.values(), key=lambda p: -p.improvement)[:k]

    def import_benchmark(self, path: Path | str) -> int:
        """Record every result of a ``benchmarks/sched_seeds.py`` JSON file (skips ones already stored)."""
        from .measure import MeasureResult

        data = json.loads(Path(path).read_text())
        seen = {(r.scheduler, r.workload, r.date) for r in self.results()}
        n = 0
        for entry in data.get("workloads", {}).values():
            for raw in entry.get("results", []):
                res = MeasureResult.model_validate(raw)
                if (res.scheduler, res.workload, res.date) in seen:
                    continue
                self.record_result(res)
                n += 1
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._col = None
