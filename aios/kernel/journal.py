"""The generation journal: LLM syscalls that survive a kernel restart, even a ``SIGKILL``.

A kernel started with ``KernelConfig.state_dir`` writes, in ``state_dir/generations.db`` (SQLite,
WAL, ``synchronous=FULL``: a row is on disk before the call that wrote it returns):

1. every accepted LLM syscall (id, agent, request) *before* ``submit`` returns: acknowledged means
   durable;
2. its generation state when the engine admits it (the rendered prompt ids, the sampling seed,
   drawn at random when the request gave none) and each time it is suspended (tokens so far per
   beam, the sampler's ``torch.Generator`` state, beam scores and finished hypotheses, stop-string
   progress, preemptions): the non-KV half of a context snapshot;
3. its outcome (the response, or the typed error) when it finishes.

The KV cache is not journaled: ``recompute`` rebuilds it from the tokens, exactly. On start, a
kernel with the same ``state_dir`` puts every unfinished generation back into its engine (a queued
one as if just submitted, a suspended one as a suspended sequence whose KV is lost), so it finishes
with the tokens an uninterrupted run gives (a generation that was running when the process died
resumes from its last journaled point: what it computed since is computed again, identically).
Callers, including a new process, get results by syscall id with ``Kernel.collect``.

Why the journal is not the KV spill: the spill is a cache of a live process; the journal is the
record of what the kernel promised. A graceful shutdown leaves unfinished generations pending
(``KernelShutdown`` is not an outcome), so the next start resumes them too. Exactness across a
restart needs the same model and the same ``max_batch_size`` (the fixed decode width); a different
width is reported in the response's ``context_actions``.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import torch

from aios.kernel.syscall import LLMRequest, LLMResponse, LLMSyscall, Syscall, SyscallError, SyscallStatus

log = logging.getLogger("aios.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY, agent TEXT NOT NULL, request TEXT NOT NULL,
    status TEXT NOT NULL,          -- queued | admitted | suspended | done | failed
    state TEXT,                    -- JSON: the generation state (see module docstring)
    outcome TEXT,                  -- JSON: the LLMResponse, or {"type", "message"}
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _b64(t: torch.Tensor | None) -> str | None:
    return None if t is None else base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str | None) -> torch.Tensor | None:
    return None if s is None else torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


class GenerationJournal:
    """Durable record of a kernel's LLM syscalls (one per ``state_dir``; used from any thread)."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.dir / "generations.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._core: Any = None
        self.recovered: list[str] = []

    # -- writing ----------------------------------------------------------------------------------
    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            if self._db is None:
                return
            self._db.execute(sql, args)

    def submitted(self, syscall: LLMSyscall) -> None:
        """Record an accepted syscall (before ``submit`` returns) and follow it to its outcome."""
        now = time.time()
        self._write(
            "INSERT OR IGNORE INTO generations (id, agent, request, status, created, updated) "
            "VALUES (?, ?, ?, 'queued', ?, ?)",
            (syscall.id, syscall.agent, syscall.request.model_dump_json(), now, now),
        )
        syscall.add_done_callback(self.finished)

    def admitted(self, seq: Any) -> None:
        """The engine turned the request into a sequence: its prompt ids and seed are now fixed."""
        self._state(seq, "admitted", tokens=False)

    def suspended(self, seq: Any, snapshot: Any) -> None:
        """A snapshot was taken: journal its non-KV half."""
        self._state(seq, "suspended", tokens=True, snapshot=snapshot)

    def _state(self, seq: Any, status: str, tokens: bool, snapshot: Any = None) -> None:
        state: dict[str, Any] = {
            "prompt_ids": list(seq.prompt_ids),
            "seed": seq.seed,
            "num_beams": seq.num_beams,
            "max_new_tokens": seq.max_new_tokens,
            "context_actions": list(seq.context_actions),
            "max_batch_size": self._width(),
        }
        if tokens:
            s = snapshot
            state.update(
                output_ids=[list(x) for x in s.output_ids],
                kv_len=s.kv_len,
                generator_state=_b64(s.generator_state),
                beam_scores=list(s.beam_scores),
                finished_beams=[list(h) for h in s.finished_beams],
                stop_scan=s.stop_scan,
                preemptions=seq.preemptions + 1,  # the suspension being recorded counts
            )
        self._write(
            "UPDATE generations SET status = ?, state = ?, updated = ? WHERE id = ? AND status NOT IN ('done', 'failed')",
            (status, json.dumps(state), time.time(), seq.syscall.id),
        )

    def finished(self, syscall: Syscall) -> None:
        if syscall.status is SyscallStatus.DONE:
            outcome, status = syscall.result.model_dump_json(), "done"
        else:
            if syscall.error.type == "KernelShutdown":  # not an outcome: the next start resumes it
                return
            outcome, status = syscall.error.model_dump_json(), "failed"
        self._write(
            "UPDATE generations SET status = ?, outcome = ?, updated = ? WHERE id = ?",
            (status, outcome, time.time(), syscall.id),
        )

    def _width(self) -> int | None:
        cfg = getattr(self._core, "config", None)
        return getattr(cfg, "max_batch_size", None)

    # -- reading ----------------------------------------------------------------------------------
    def row(self, syscall_id: str) -> dict[str, Any] | None:
        with self._lock:
            if self._db is None:
                return None
            cur = self._db.execute(
                "SELECT id, agent, request, status, state, outcome FROM generations WHERE id = ?",
                (syscall_id,),
            )
            r = cur.fetchone()
        if r is None:
            return None
        return dict(zip(("id", "agent", "request", "status", "state", "outcome"), r, strict=True))

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM generations WHERE status NOT IN ('done', 'failed') ORDER BY created, rowid"
            ).fetchall()
        return [self.row(i) for (i,) in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(
                self._db.execute("SELECT status, COUNT(*) FROM generations GROUP BY status").fetchall()
            )

    # -- recovery ---------------------------------------------------------------------------------
    def attach(self, core: Any) -> None:
        """Journal the engine's admissions and suspensions (through its context manager)."""
        if self._core is core:
            return
        self._core = core
        ctx = getattr(core, "ctx", None)
        if ctx is not None:
            ctx.journal = self

    def recover(self, kernel: Any) -> list[LLMSyscall]:
        """Put every unfinished generation back into the kernel's LLM core; returns their syscalls."""
        rows = self.pending()
        if not rows:
            return []
        core = kernel.llm
        self.attach(core)
        out = []
        for r in rows:
            sc = LLMSyscall(
                id=r["id"], agent=r["agent"], request=LLMRequest.model_validate_json(r["request"])
            )
            sc.claim()  # an internal resubmission: the object cannot be submitted again by anyone
            sc.add_done_callback(self.finished)
            kernel.adopt(sc)
            state = json.loads(r["state"]) if r["state"] else None
            if state is None or not hasattr(core, "resubmit"):
                core.add(sc)  # never admitted (or a core without sequences): start it afresh
            else:
                core.resubmit(sequence_from_state(core, sc, state))
            out.append(sc)
        self.recovered = [s.id for s in out]
        log.info("resumed %d journaled generation(s) from %s", len(out), self.dir)
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def sequence_from_state(engine: Any, syscall: LLMSyscall, state: dict[str, Any]) -> Any:
    """An engine ``Sequence`` for a journaled generation: waiting (admitted, no tokens yet) or
    suspended with a snapshot whose KV is lost, so the engine's resume recomputes it from tokens."""
    from aios.kernel.context import KVHandle, Snapshot
    from aios.kernel.sequence import SeqStatus, Sequence

    req = syscall.request
    seq = Sequence(
        syscall=syscall, prompt_ids=list(state["prompt_ids"]), max_new_tokens=state["max_new_tokens"],
        arrival=time.monotonic(), seq_id=next(engine.seq_ids),
    )  # fmt: skip
    seq.num_beams = state["num_beams"]
    seq.seed = state["seed"]
    seq.context_actions = list(state.get("context_actions", []))
    width = getattr(getattr(engine, "config", None), "max_batch_size", None)
    if state.get("max_batch_size") not in (None, width):
        seq.context_actions.append(
            f"resumed at max_batch_size={width} after a restart (journaled at {state['max_batch_size']}): "
            "tokens may differ from an uninterrupted run"
        )
    if req.temperature > 0:
        seq.generator = torch.Generator(device="cpu").manual_seed(seq.seed)
    if req.choices:
        seq.choice_trie = engine.sampler.choice_trie(req.choices)
    if "output_ids" not in state:
        return seq  # admitted, never suspended: it starts from its prefill again
    choice_nodes = []
    if seq.choice_trie is not None:
        for ids in state["output_ids"]:
            node = seq.choice_trie
            for t in ids:
                node = node[t]
            choice_nodes.append(node)
    lost = KVHandle(
        0, "lost", num_beams=len(state["output_ids"]), reason="resumed from the journal after a restart"
    )
    seq.snapshot = Snapshot(
        prompt_ids=list(state["prompt_ids"]),
        output_ids=[list(x) for x in state["output_ids"]],
        kv_len=state["kv_len"],
        kv=lost,
        generator_state=_unb64(state.get("generator_state")),
        beam_scores=list(state["beam_scores"]),
        finished_beams=[tuple(h) for h in state["finished_beams"]],
        choice_nodes=choice_nodes,
        stop_scan=state["stop_scan"],
    )
    seq.output_ids = [list(x) for x in state["output_ids"]]
    seq.kv_len = state["kv_len"]
    seq.preemptions = state.get("preemptions", 0)
    seq.status = SeqStatus.SUSPENDED
    return seq


def finished_syscall(row: dict[str, Any]) -> LLMSyscall:
    """The syscall of a journal row that finished before a restart, with its result or error."""
    sc = LLMSyscall(id=row["id"], agent=row["agent"], request=LLMRequest.model_validate_json(row["request"]))
    if row["status"] == "done":
        sc.complete(LLMResponse.model_validate_json(row["outcome"]))
    elif row["status"] == "failed":
        err = SyscallError.model_validate_json(row["outcome"])
        sc.fail(err.type, err.message)
    else:
        raise ValueError(f"syscall {row['id']} has not finished ({row['status']})")
    return sc
