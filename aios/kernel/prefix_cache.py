"""Conversation KV reuse: the KV of an agent's earlier call, kept for the agent's next call.

An agent is a chain of calls that extend one conversation (system prompt, earlier turns, tool
results). When a call finishes, its KV (prompt and answer) is *retained* for its agent; when the
same agent's next call begins with those tokens, its prefill starts from the retained KV and
computes only the rest.

Exactness. The model runner's numbers are row-invariant (``model_runner``, ``attention``,
``batch_invariance``): the KV of position ``p`` depends only on the tokens ``0..p``, not on whether
it was computed in a one-shot prefill, a prefill that continued other KV, or a one-token decode
step, nor on what shared the forward. So restoring the retained KV of the common prefix and
prefilling the rest gives the logits a fresh prefill gives, bit for bit (tests check it). A runner
without row invariance (``fixed_rows`` fallback, ``batch_invariant=False``) gets no reuse: the
engine does not build the cache there, because outputs would then depend on history (measured on
SmolLM2 with the previous SDPA runner: reused KV moved the next call's logits by up to 2e-5).

Privacy. Entries are keyed by the agent the kernel stamped on the syscall (its credential): a
prompt that happens to start with another agent's conversation never matches it.

Budget and eviction (agent-aware). Retained KV lives in memory up to ``memory_mb``, then on disk
(with a checksum) up to ``disk_mb``, then it is dropped. When room is needed, victims are chosen in
this order:

1. entries of agents that have exited (``agent_exited``): dropped outright, the agent is gone;
2. entries idle for at least ``grace_s`` (least recently used first);
3. entries younger than ``grace_s`` last: their agent is most likely in a tool call and about to
   come back (least recently used first).

Victims leave memory for disk, and disk entries are dropped in the same order. An entry idle longer
than ``ttl_s`` is dropped whatever the budget (checked whenever a call is admitted or finishes), so
an agent that never returns does not pin memory. A disk entry that fails its checksum (or is
missing) is counted and treated as a miss: the prompt is recomputed, never served from bad KV.
An entry is taken by the call that uses it; that call's own KV is retained when it finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aios.kernel.context import KV, ContextManager, KVHandle, SnapshotLost

log = logging.getLogger("aios.prefix_cache")


@dataclass(eq=False)
class Retained:
    """One agent's retained KV: the ``tokens`` whose KV it is (positions ``0..len-1``) and where it is."""

    agent: str
    tokens: list[int]
    handle: KVHandle
    last_used: float
    exited: bool = False


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    retained: int = 0
    to_disk: int = 0
    dropped: int = 0  # for room or because the agent exited
    expired: int = 0  # idle longer than ttl_s
    corrupt: int = 0  # failed the checksum or missing: recomputed
    entries: int = 0
    bytes_in_memory: int = 0
    bytes_on_disk: int = 0


@dataclass
class PrefixCache:
    """Per-agent retained prompt KV within a memory and a disk budget (see the module docstring)."""

    memory_mb: float = 1024
    disk_mb: float = 4096
    grace_s: float = 60.0
    ttl_s: float = 600.0
    spill_dir: str | None = None
    max_per_agent: int = 4
    clock: Callable[[], float] = time.monotonic
    stats: PrefixStats = field(default_factory=PrefixStats)

    def __post_init__(self):
        self.store = ContextManager(self.memory_mb, self.spill_dir)
        self.disk_budget = int(self.disk_mb * 1024 * 1024)
        self.entries: dict[str, list[Retained]] = {}
        self._exited: set[str] = set()
        self._lock = threading.Lock()  # agent_exited comes from agent threads

    # -- the two hooks of the engine -----------------------------------------------------------------
    def take(self, agent: str, prompt: list[int]) -> tuple[int, KV] | None:
        """The longest retained prefix of ``agent``'s that ``prompt`` starts with.

        Leaves at least one prompt token to compute (its logits start the answer). Returns
        ``(n, kv)`` with the KV of positions ``[0, n)``, or None. The entry is consumed.
        """
        self._expire()
        self.stats.lookups += 1
        best, best_n = None, 0
        for e in self.entries.get(agent, []):
            n = _common_prefix(e.tokens, prompt)
            if n > best_n:
                best, best_n = e, n
        if best is None:
            return None
        self._remove(best)
        try:
            kv = self.store.load(best.handle)[0]
        except SnapshotLost as exc:
            self.stats.corrupt += 1
            log.warning("retained KV of %s unusable (%s): prefilling its prompt in full", agent, exc)
            return None
        self.stats.hits += 1
        self.stats.reused_tokens += best_n
        return best_n, [(k[:, :best_n], v[:, :best_n]) for k, v in kv]

    def retain(self, agent: str, tokens: list[int], read_kv: Callable[[int], KV]) -> None:
        """Keep the KV of ``tokens`` (positions ``0..len-1``) for ``agent``; ``read_kv(n)`` copies it."""
        self._expire()
        n = len(tokens)
        if n == 0:
            return
        tokens = list(tokens)
        with self._lock:
            self._exited.discard(agent)  # it made a call: it is running (again)
        for e in list(self.entries.get(agent, [])):  # superseded: same conversation, shorter
            if len(e.tokens) <= n and tokens[: len(e.tokens)] == e.tokens:
                self._drop(e)
        own = self.entries.get(agent, [])
        if len(own) >= self.max_per_agent:
            self._drop(min(own, key=lambda e: e.last_used))
        kv = read_kv(n)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.store.budget and nbytes > self.disk_budget:
            return
        self._make_room(nbytes)
        if self.store.stats.bytes_in_memory + nbytes > self.store.budget:
            self._make_disk_room(nbytes)
        handle = self.store.store([kv])
        if handle.location == "lost":
            return
        if handle.location == "disk":
            self.stats.to_disk += 1
        self.entries.setdefault(agent, []).append(Retained(agent, tokens, handle, self.clock()))
        self.stats.retained += 1
        self._sync()

    def agent_exited(self, agent: str) -> None:
        """The agent's run ended: its entries go first when room is needed (any thread)."""
        with self._lock:
            self._exited.add(agent)

    def close(self) -> None:
        for e in [e for es in self.entries.values() for e in es]:
            self._remove(e)
            self.store.release(e.handle)
        self.store.close()

    # -- helpers ------------------------------------------------------------------------------------------
    def _victims(self) -> list[Retained]:
        """Every entry, first to go first: exited agents, then idle past the grace, then the rest (LRU)."""
        now = self.clock()
        with self._lock:
            exited = set(self._exited)
        every = [e for es in self.entries.values() for e in es]
        for e in every:
            e.exited = e.agent in exited
        return sorted(every, key=lambda e: (not e.exited, now - e.last_used < self.grace_s, e.last_used))

    def _make_room(self, nbytes: int) -> None:
        """Free memory for ``nbytes``: exited agents' entries are dropped, others move to disk."""
        for e in self._victims():
            if self.store.stats.bytes_in_memory + nbytes <= self.store.budget:
                return
            if e.handle.location == "disk":
                continue
            if e.exited:
                self._drop(e)
                continue
            self._make_disk_room(e.handle.nbytes)
            kv = self.store.load(e.handle)
            e.handle = self.store.store(kv, to_disk=True)
            self.stats.to_disk += 1
            if e.handle.location == "lost":
                self._drop(e)
            self._sync()

    def _make_disk_room(self, nbytes: int) -> None:
        for e in self._victims():
            if self.store.stats.bytes_on_disk + nbytes <= self.disk_budget:
                return
            if e.handle.location == "disk":
                self._drop(e)

    def _expire(self) -> None:
        now = self.clock()
        for e in [e for es in self.entries.values() for e in es if now - e.last_used > self.ttl_s]:
            self._drop(e, expired=True)

    def _drop(self, e: Retained, expired: bool = False) -> None:
        self._remove(e)
        self.store.release(e.handle)
        if expired:
            self.stats.expired += 1
        else:
            self.stats.dropped += 1
        self._sync()

    def _remove(self, e: Retained) -> None:
        own = self.entries.get(e.agent, [])
        if e in own:
            own.remove(e)
            if not own:
                del self.entries[e.agent]
        self._sync()

    def _sync(self) -> None:
        self.stats.entries = sum(len(es) for es in self.entries.values())
        self.stats.bytes_in_memory = self.store.stats.bytes_in_memory
        self.stats.bytes_on_disk = self.store.stats.bytes_on_disk


def _common_prefix(tokens: list[int], prompt: list[int]) -> int:
    """Length of the common prefix, leaving at least one prompt token to compute (its logits answer)."""
    limit = min(len(tokens), len(prompt) - 1)
    step, n = 64, 0
    while n < limit:  # compare slices (fast), then the last partial one token by token
        m = min(step, limit - n)
        if tokens[n : n + m] == prompt[n : n + m]:
            n += m
            continue
        while n < limit and tokens[n] == prompt[n]:
            n += 1
        break
    return n
