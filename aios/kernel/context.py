"""The context manager: exact snapshots of suspended generations, and context-window fitting.

Snapshots
---------
When the scheduler takes a sequence's batch rows away, everything needed to continue it *exactly*
is captured in a ``Snapshot``: the prompt and generated token ids, the KV cache of every beam
(the cache does not hold the last sampled token, which is why the generated ids are kept), the
sampler's ``torch.Generator`` state, the beam state (beams, scores, finished hypotheses, the
constrained-decoding position) and stop-string progress. Restoring writes the KV back into free
batch slots: the prefix is never recomputed.

Where the KV goes: it stays on the model's device while the in-memory total is within
``kv_memory_budget_mb`` when the device is the CPU; on an accelerator it moves to CPU memory (the
accelerator's memory belongs to running requests). Past the budget, snapshots are written to disk
(safetensors) under ``spill_dir`` (or a private temporary directory) and read back on restore.

A disk is not trusted: each spilled file carries a CRC-32 of its tensors, checked on restore. A
file that is missing, truncated or corrupted, and a spill that could not be written at all (disk
full), raise ``SnapshotLost`` on restore instead of handing back garbage; the engine then rebuilds
the KV from the snapshot's token ids (``recompute``), which the fixed-shape decode makes exact. The
KV is an optimisation over the tokens, never the only copy of a generation.

Context window
--------------
``fit_prompt`` renders a chat and makes ``prompt + max_new_tokens`` fit the model's window:

- ``truncate``: drop the oldest non-system turns (always keep the system messages and the last
  user turn with whatever follows it); if one turn is still too long, cut tokens out of its
  middle (the start states the task, the end is what the model answers); as the last resort cut
  the middle of the rendered prompt itself.
- ``summarize``: the turns ``truncate`` would drop are summarized by the model itself (a nested
  generation the engine runs as an ordinary internal request) and replaced by a system message
  holding the summary; then ``truncate`` applies to whatever still does not fit.

Every action is reported (``LLMResponse.context_actions``), never silent, and long input never
raises: only a request whose ``max_new_tokens`` alone leaves no room is refused (ContextTooLong).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("aios.context")

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values) [kv_head, length, dim]


# ----------------------------------------------------------------------------------------------------
# Snapshots
# ----------------------------------------------------------------------------------------------------


class SnapshotLost(RuntimeError):
    """A suspended generation's KV cannot be given back (spill failed, file missing or corrupt)."""

    error_type = "SnapshotLost"


@dataclass
class KVHandle:
    """Where one beam group's KV lives: in memory (``kv``), on disk (``path``), or nowhere
    (``"lost"``: the spill failed; ``reason`` says why and the tokens rebuild it)."""

    nbytes: int
    location: str  # "device" | "cpu" | "disk" | "lost"
    kv: list[KV] | None = None  # one KV per beam
    path: Path | None = None
    num_beams: int = 1
    num_layers: int = 0
    crc: int | None = None  # CRC-32 of the spilled tensors, in file order
    reason: str = ""


def _tensor_crc(tensors: dict[str, torch.Tensor]) -> int:
    """CRC-32 over the raw bytes of ``tensors`` in key order (catches truncation and bit rot)."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu().reshape(-1)
        crc = zlib.crc32(t.view(torch.uint8).numpy(), crc)
    return crc


@dataclass
class Snapshot:
    """Everything needed to continue a suspended generation exactly."""

    prompt_ids: list[int]
    output_ids: list[list[int]]
    kv_len: int
    kv: KVHandle
    generator_state: torch.Tensor | None
    beam_scores: list[float]
    finished_beams: list[tuple[float, list[int]]]
    choice_nodes: list[Any]
    stop_scan: int
    created: float = 0.0

    @property
    def last_tokens(self) -> list[int]:
        """The newest sampled token per beam (not in the KV cache yet)."""
        return [ids[-1] for ids in self.output_ids]


@dataclass
class ContextStats:
    snapshots: int = 0
    restores: int = 0
    spills: int = 0
    bytes_in_memory: int = 0
    bytes_on_disk: int = 0
    peak_bytes_in_memory: int = 0
    snapshot_bytes_total: int = 0
    spill_failures: int = 0  # spills that could not be written (disk full, I/O error)
    lost: int = 0  # restores refused: KV missing, truncated, corrupt, or never written


class ContextManager:
    """Stores suspended KV caches within a memory budget, spilling to disk past it."""

    def __init__(self, memory_budget_mb: float = 2048, spill_dir: str | Path | None = None, device=None):
        self.budget = int(memory_budget_mb * 1024 * 1024)
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._tmp: str | None = None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.stats = ContextStats()
        self._lock = threading.Lock()
        self._counter = 0
        self.journal: Any = None  # a GenerationJournal: snapshots' non-KV half made durable (see journal)

    @property
    def spill_dir(self) -> Path:
        if self._spill_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="aios-kv-")
            self._spill_dir = Path(self._tmp)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    # -- KV storage ------------------------------------------------------------------------------------
    def store(self, kv_per_beam: list[KV], to_disk: bool = False) -> KVHandle:
        """Keep KV: in memory while within the budget (unless ``to_disk``), else spilled to disk."""
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for kv in kv_per_beam for k, v in kv)
        n_layers = len(kv_per_beam[0])
        with self._lock:
            self.stats.snapshots += 1
            self.stats.snapshot_bytes_total += nbytes
            if not to_disk and self.stats.bytes_in_memory + nbytes <= self.budget:
                self.stats.bytes_in_memory += nbytes
                self.stats.peak_bytes_in_memory = max(self.stats.peak_bytes_in_memory, self.stats.bytes_in_memory)
                loc = "device" if self.device.type == "cpu" else "cpu"
                if loc == "cpu":
                    kv_per_beam = [[(k.to("cpu"), v.to("cpu")) for k, v in kv] for kv in kv_per_beam]
                return KVHandle(nbytes, loc, kv=kv_per_beam, num_beams=len(kv_per_beam), num_layers=n_layers)
            self._counter += 1
            path = self.spill_dir / f"kv-{id(self):x}-{self._counter}.safetensors"
            self.stats.spills += 1
            self.stats.bytes_on_disk += nbytes
        from safetensors.torch import save_file

        tensors = {}
        for b, kv in enumerate(kv_per_beam):
            for i, (k, v) in enumerate(kv):
                tensors[f"b{b}.k{i}"] = k.contiguous().cpu()
                tensors[f"b{b}.v{i}"] = v.contiguous().cpu()
        try:
            save_file(tensors, str(path))
        except Exception as exc:  # disk full, read-only, I/O error: keep the tokens, drop the KV
            path.unlink(missing_ok=True)
            with self._lock:
                self.stats.spill_failures += 1
                self.stats.bytes_on_disk -= nbytes
            log.warning("KV spill to %s failed (%s); it will be recomputed from tokens on resume", path, exc)
            return KVHandle(nbytes, "lost", num_beams=len(kv_per_beam), num_layers=n_layers,
                            reason=f"spill failed: {type(exc).__name__}: {exc}")  # fmt: skip
        return KVHandle(
            nbytes, "disk", path=path, num_beams=len(kv_per_beam), num_layers=n_layers, crc=_tensor_crc(tensors)
        )

    def load(self, handle: KVHandle) -> list[KV]:
        """The KV of a handle (and release it: a snapshot is restored once).

        Raises ``SnapshotLost`` when there is no trustworthy KV to give back: never written, or a
        spilled file that is missing, unreadable, or fails its checksum.
        """
        try:
            if handle.location == "lost":
                raise SnapshotLost(handle.reason or "the KV of this snapshot was not kept")
            if handle.location == "disk":
                kv = self._read_spill(handle)
            else:
                kv = handle.kv
        except SnapshotLost:
            with self._lock:
                self.stats.lost += 1
            raise
        finally:
            self.release(handle)
        self.stats.restores += 1
        return kv

    @staticmethod
    def _read_spill(handle: KVHandle) -> list[KV]:
        from safetensors.torch import load_file

        try:
            t = load_file(str(handle.path))
            kv = [
                [(t[f"b{b}.k{i}"], t[f"b{b}.v{i}"]) for i in range(handle.num_layers)] for b in range(handle.num_beams)
            ]
        except Exception as exc:  # missing, truncated, a mangled header, a tensor gone
            raise SnapshotLost(f"spilled KV {handle.path} unreadable: {type(exc).__name__}: {exc}") from exc
        if handle.crc is not None and _tensor_crc(t) != handle.crc:
            raise SnapshotLost(f"spilled KV {handle.path} failed its checksum (corrupted on disk)")
        return kv

    def release(self, handle: KVHandle) -> None:
        with self._lock:
            if handle.location == "disk":
                if handle.path is not None:
                    handle.path.unlink(missing_ok=True)
                    handle.path = None
                    self.stats.bytes_on_disk -= handle.nbytes
            elif handle.kv is not None:
                handle.kv = None
                self.stats.bytes_in_memory -= handle.nbytes

    # -- snapshots of sequences ----------------------------------------------------------------------------
    def admitted(self, seq) -> None:
        """A request became a sequence (prompt ids and seed fixed): journal it when durable."""
        if self.journal is not None:
            self.journal.admitted(seq)

    def snapshot(self, seq, kv_per_beam: list[KV], now: float = 0.0) -> Snapshot:
        snap = self._snapshot(seq, kv_per_beam, now)
        if self.journal is not None:
            self.journal.suspended(seq, snap)
        return snap

    def _snapshot(self, seq, kv_per_beam: list[KV], now: float = 0.0) -> Snapshot:
        gen_state = seq.generator.get_state() if seq.generator is not None else None
        return Snapshot(
            prompt_ids=list(seq.prompt_ids),
            output_ids=[list(ids) for ids in seq.output_ids],
            kv_len=seq.kv_len,
            kv=self.store(kv_per_beam),
            generator_state=gen_state,
            beam_scores=list(seq.beam_scores),
            finished_beams=copy.deepcopy(seq.finished_beams),
            choice_nodes=list(seq.choice_nodes),
            stop_scan=seq.stop_scan,
            created=now,
        )

    def restore(self, seq, snap: Snapshot) -> list[KV]:
        """Put the snapshot's non-KV state back on ``seq``; return the KV per beam for the runner."""
        seq.output_ids = [list(ids) for ids in snap.output_ids]
        seq.kv_len = snap.kv_len
        if snap.generator_state is not None and seq.generator is not None:
            seq.generator.set_state(snap.generator_state)
        seq.beam_scores = list(snap.beam_scores)
        seq.finished_beams = copy.deepcopy(snap.finished_beams)
        seq.choice_nodes = list(snap.choice_nodes)
        seq.stop_scan = snap.stop_scan
        return self.load(snap.kv)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# ----------------------------------------------------------------------------------------------------
# Context-window fitting
# ----------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    prompt_ids: list[int]
    actions: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # turns removed (for summarize)
    messages: list[dict] = field(default_factory=list)


class ContextTooLong(ValueError):
    error_type = "ContextTooLong"


def _middle_cut(ids: list[int], keep: int) -> list[int]:
    if keep <= 0:
        return []
    if len(ids) <= keep:
        return ids
    head = keep // 2
    tail = keep - head
    return ids[:head] + ids[len(ids) - tail :]


def fit_prompt(render, tokenizer, messages: list[dict], budget: int) -> FitResult:
    """Make the rendered ``messages`` at most ``budget`` tokens (the truncate policy).

    ``render(messages) -> list[int]``. Returns the ids, what was done, and the dropped turns.
    """
    if budget < 1:
        raise ContextTooLong("max_new_tokens leaves no room for the prompt in the model's context window")
    ids = render(messages)
    if len(ids) <= budget:
        return FitResult(ids, messages=messages)
    actions: list[str] = []
    msgs = list(messages)
    n_orig = len(ids)
    # the protected tail: the last user turn and everything after it
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs) - 1)
    droppable = [i for i, m in enumerate(msgs) if m["role"] != "system" and i < last_user]
    dropped: list[dict] = []
    for i in droppable:  # oldest first
        dropped.append(msgs[i])
        trial = [m for j, m in enumerate(msgs) if j not in {k for k in droppable[: len(dropped)]}]
        ids = render(trial)
        if len(ids) <= budget:
            break
    if dropped:
        keep_idx = {k for k in droppable[: len(dropped)]}
        msgs = [m for j, m in enumerate(msgs) if j not in keep_idx]
        actions.append(f"dropped {len(dropped)} oldest turn(s)")
    ids = render(msgs)
    # still too long: cut the middle of the longest remaining turns, non-system first
    order = sorted(range(len(msgs)), key=lambda j: (msgs[j]["role"] == "system", -len(msgs[j].get("content") or "")))
    for j in order:
        if len(ids) <= budget:
            break
        content = msgs[j].get("content") or ""
        tok = tokenizer(content, add_special_tokens=False)["input_ids"]
        excess = len(ids) - budget
        keep = max(0, len(tok) - excess - 8)  # a few tokens slack: re-tokenizing the joint can merge
        if keep >= len(tok):
            continue
        head, tail = keep // 2, keep - keep // 2
        new_content = tokenizer.decode(tok[:head]) + " … " + (tokenizer.decode(tok[len(tok) - tail :]) if tail else "")
        msgs = [dict(m) for m in msgs]
        msgs[j]["content"] = new_content
        ids = render(msgs)
        actions.append(f"cut {len(tok) - keep} tokens from the middle of a {msgs[j]['role']} turn")
    if len(ids) > budget:  # template overhead alone is too long: cut the rendered prompt
        actions.append(f"cut {len(ids) - budget} tokens from the middle of the rendered prompt")
        ids = _middle_cut(ids, budget)
    actions.insert(0, f"prompt of {n_orig} tokens exceeded the budget of {budget}")
    return FitResult(ids, actions, dropped, msgs)
