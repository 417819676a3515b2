"""``LLMEngine``: the local LLM core. Continuous batching with an agent scheduler and exact snapshots.

One engine owns one model. ``add`` (any thread) validates and renders a request and drops it in an
inbox; ``step`` (the kernel's LLM thread only) does one scheduling round:

1. move new requests from the inbox to the scheduler's ready queue;
2. ask the scheduler for a plan and apply its switches: suspend (KV -> context manager), resume
   (KV -> free slots; no prefix recompute);
3. one forward for the step: the admitted prompts (prefill) and one token per running beam
   (decode) together (``model_runner``);
4. sample/advance each sequence (``sampler``), finish those that are done (``prompts.response``,
   ``syscall.complete``).

Why it is exact: see ``model_runner``, ``attention`` and ``batch_invariance`` (a row's numbers do
not depend on how many rows share the forward) and ``context`` (a snapshot carries KV, sampler and
beam state). A request's tokens depend only on itself, never on which other requests shared its
steps or how often it was suspended.

Failures are contained: an exception while serving one sequence fails that syscall with a typed
error; if a step's forward fails, each of its sequences is retried in a forward of its own (the
same numbers, by the invariance above) and only those that fail again are failed. The engine keeps
serving.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from aios.kernel.config import KernelConfig
from aios.kernel.context import ContextManager, ContextTooLong, SnapshotLost, fit_prompt
from aios.kernel.faults import require_finite, run_isolated
from aios.kernel.model_runner import Chunk, ModelRunner
from aios.kernel.prefix_cache import PrefixCache
from aios.kernel.prompts import Prompts, Retriever, eos_ids, message_dicts
from aios.kernel.recompute import recompute_kv
from aios.kernel.sampler import Sampler
from aios.kernel.scheduler import Plan, Scheduler, make_policy
from aios.kernel.sequence import SeqStatus, Sequence
from aios.kernel.syscall import LLMSyscall

log = logging.getLogger("aios.engine")


class EngineError(RuntimeError):
    error_type = "EngineError"


@dataclass
class EngineStats:
    steps: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # real rows over all decode steps
    rows_hist: dict[int, int] = field(default_factory=dict)
    prefill_tokens: int = 0  # prompt tokens computed
    prefill_reused_tokens: int = 0  # prompt tokens whose KV came from the agent's earlier call
    generated_tokens: int = 0
    busy_s: float = 0.0
    decode_s: float = 0.0  # forwards with decode rows only
    prefill_s: float = 0.0  # forwards that include prompt tokens
    snapshot_s: float = 0.0
    restore_s: float = 0.0
    completed: int = 0
    failed: int = 0
    preemptions: int = 0


@dataclass
class Work:
    """One sequence's part of a step's forward: its chunks (a prompt, or one token per beam)."""

    seq: Sequence
    chunks: list[Chunk]
    prefill: bool


class LLMEngine:
    """The batched local LLM core (implements the kernel's ``LLMCore`` protocol).

    ``LLMEngine(model, tokenizer, config=None, *, retriever=None, context_window=None, **overrides)``
    ``config`` is a ``KernelConfig`` (its scheduler, batch and KV-budget fields are used);
    keyword overrides replace single fields. ``context_window`` overrides the model's
    ``max_position_embeddings`` (tests use a small one). ``retriever(agent, query, k)`` serves
    ``request.retrieve_k`` (the storage manager sets it).
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: KernelConfig | None = None,
        *,
        retriever: Retriever | None = None,
        context_window: int | None = None,
        trace_len: int = 4096,
        **overrides: Any,
    ):
        cfg = (config or KernelConfig()).model_dump()
        cfg.update(overrides)
        self.config = KernelConfig(**cfg)
        self.model = model
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.window = int(context_window or getattr(model.config, "max_position_embeddings", 2048))
        self.runner = ModelRunner(model, self.config.max_batch_size, self.config.batch_invariant, max_len=self.window)
        self.policy = make_policy(self.config.scheduler, self.config.quantum, self.config.aging, self.config.max_wait)
        self.scheduler = Scheduler(self.policy, self.config.max_batch_size, self.config.max_batch_tokens)
        self.seq_ids = itertools.count()  # this engine's sequence ids (tie-breaks in the policies' keys)
        self.ctx = ContextManager(self.config.kv_memory_budget_mb, self.config.spill_dir, device=self.runner.device)
        self.prefix: PrefixCache | None = None  # conversation KV reuse; exact only on a row-invariant runner
        if self.config.kv_reuse and self.config.batch_invariant and not self.runner.fixed_rows:
            self.prefix = PrefixCache(
                memory_mb=self.config.kv_retain_mb,
                disk_mb=self.config.kv_retain_disk_mb,
                ttl_s=self.config.kv_retain_s,
                spill_dir=str(self.config.spill_dir) if self.config.spill_dir else None,
            )
        self.eos_ids = eos_ids(model, tokenizer)
        self.prompts = Prompts(tokenizer, self.eos_ids, self.window)
        self.sampler = Sampler(tokenizer, self.eos_ids, self.window, self.runner.cache.copy_slots)
        self._inbox: deque[Sequence] = deque()
        self._lock = threading.RLock()
        self._closed = False
        self._stats = EngineStats()
        # per finished request (benchmarks read these); bounded like the kernel's history, so a
        # long-running engine does not grow without end
        self.records: deque[dict[str, Any]] = deque(maxlen=self.config.history_limit)
        # per step: agents holding rows (bounded; tests and debugging read the schedule from it)
        self.trace: deque[tuple[str, ...]] = deque(maxlen=trace_len)

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return self.prompts.render(messages, tools)

    # ------------------------------------------------------------------------------------------------
    # LLMCore protocol
    # ------------------------------------------------------------------------------------------------
    def add(self, syscall: LLMSyscall) -> None:
        """Accept a syscall from any thread. Never raises: a bad request fails its syscall."""
        try:
            self._add(syscall, policy=self.config.context_policy)
        except Exception as exc:
            log.debug("rejecting %s", syscall.id, exc_info=True)
            syscall.fail(getattr(exc, "error_type", "InvalidRequest"), str(exc) or type(exc).__name__)

    def _add(self, syscall: LLMSyscall, policy: str, actions: list[str] | None = None, messages=None) -> None:
        if self._closed:
            raise EngineError("engine is closed")
        req = syscall.request
        if req.num_beams > self.config.max_batch_size:
            raise ValueError(f"num_beams={req.num_beams} exceeds max_batch_size={self.config.max_batch_size}")
        actions = list(actions or [])
        if messages is None:
            messages = message_dicts(req)
            if req.retrieve_k > 0:
                messages = self.prompts.with_retrieved(self.retriever, syscall, messages)
                actions.append(f"retrieved up to {req.retrieve_k} stored item(s)")
        budget = self.window - req.max_new_tokens
        if budget < 1:
            raise ContextTooLong(
                f"max_new_tokens={req.max_new_tokens} does not fit the model's context window of {self.window} tokens"
            )
        fit = fit_prompt(lambda m: self.render(m, req.tools), self.tokenizer, messages, budget)
        if fit.dropped and policy == "summarize":
            self._summarize_then_add(syscall, messages, fit.dropped, actions)
            return
        seq = Sequence(syscall=syscall, prompt_ids=fit.prompt_ids, max_new_tokens=req.max_new_tokens, arrival=time.monotonic(), seq_id=next(self.seq_ids))
        seq.num_beams = req.num_beams
        seq.context_actions = actions + fit.actions
        if fit.actions:
            log.info("request %s: %s", syscall.id, "; ".join(fit.actions))
        seq.seed = req.seed
        if req.temperature > 0:
            seq.seed = req.seed if req.seed is not None else secrets.randbits(63)
            seq.generator = torch.Generator(device="cpu").manual_seed(seq.seed)
        if req.choices:
            seq.choice_trie = self.sampler.choice_trie(req.choices)
        self.ctx.admitted(seq)  # durable state (a kernel with a journal): prompt ids and seed are fixed now
        with self._lock:
            self._inbox.append(seq)

    def resubmit(self, seq: Sequence) -> None:
        """Take back a sequence rebuilt from the journal after a restart (waiting, or suspended with
        its KV lost: the resume recomputes it from tokens)."""
        with self._lock:
            self._inbox.append(seq)

    def _summarize_then_add(self, syscall: LLMSyscall, messages: list[dict], dropped: list[dict], actions) -> None:
        """The summarize policy: an internal request summarizes the dropped turns, then the real one is queued."""
        inner = self.prompts.summary_call(syscall, dropped)

        def _resume(done: LLMSyscall) -> None:
            try:
                kept, note = self.prompts.merge_summary(messages, dropped, done)
                # queue the real request with the summarized messages; truncate handles any remaining excess
                self._add(syscall, policy="truncate", actions=actions + [note], messages=kept)
            except Exception as exc:
                syscall.fail(getattr(exc, "error_type", "ContextError"), str(exc))

        inner.add_done_callback(_resume)
        self._add(inner, policy="truncate")

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._inbox) or self.scheduler.has_work()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pending = list(self._inbox)
            self._inbox.clear()
        for seq in pending + list(self.scheduler.running) + list(self.scheduler.ready):
            self._fail(seq, "KernelShutdown", "the engine was closed before this request finished")
        self.ctx.close()
        if self.prefix is not None:
            self.prefix.close()

    def agent_exited(self, agent: str) -> None:
        """The agent's run is over: its retained conversation KV is the first to go (any thread)."""
        if self.prefix is not None:
            self.prefix.agent_exited(agent)

    # ------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------
    def step(self) -> bool:
        t0 = time.perf_counter()
        if not self._take_inbox():
            return False
        plan = self.scheduler.schedule(time.monotonic())
        self._switch(plan)
        work = self._work(plan.admit)
        logits = self._forward(work)
        self._advance(work, logits)
        self._stats.steps += 1
        self._stats.busy_s += time.perf_counter() - t0
        return True

    def _take_inbox(self) -> bool:
        """Queue the requests that arrived since the last step; False when there is nothing to do."""
        with self._lock:
            new = list(self._inbox)
            self._inbox.clear()
        now = time.monotonic()
        for seq in new:
            self.scheduler.add(seq, now)
        for seq in [s for s in self.scheduler.running + self.scheduler.ready if s.syscall.finished]:
            self._fail(seq, "Cancelled", "cancelled")  # ended from outside: free its rows and snapshot
        return self.scheduler.has_work()

    def _switch(self, plan: Plan) -> None:
        for seq in plan.suspend:
            self._guard(seq, self._suspend)
        for seq in plan.resume:
            self._guard(seq, self._resume)
        self.trace.append(tuple(s.agent for s in self.scheduler.running))

    def _work(self, admit: list[Sequence]) -> list[Work]:
        """The step's forward: one token per beam of every decoding sequence, then the admitted prompts."""
        work = [
            Work(s, [Chunk(s.slots[j], [ids[-1]], s.kv_len) for j, ids in enumerate(s.output_ids)], False)
            for s in self.scheduler.running
            if s.status is SeqStatus.RUNNING and s not in admit
        ]
        for seq in admit:
            self._guard(seq, self._admit)
            if seq.slots:
                n = seq.prefix_reused
                work.append(Work(seq, [Chunk(seq.slots[0], seq.prompt_ids[n:], n)], True))
        return work

    def _guard(self, seq: Sequence, fn) -> None:
        try:
            fn(seq)
        except Exception as exc:
            log.exception("request %s failed inside the engine", seq.syscall.id)
            self._fail(seq, getattr(exc, "error_type", "EngineError"), f"{type(exc).__name__}: {exc}")

    def _suspend(self, seq: Sequence) -> None:
        t0 = time.perf_counter()
        kv = [self.runner.cache.read(seq.slots[j], seq.kv_len) for j in range(len(seq.output_ids))]
        seq.snapshot = self.ctx.snapshot(seq, kv, time.monotonic())
        self.runner.release(seq.slots)
        seq.slots = []
        seq.status = SeqStatus.SUSPENDED
        seq.preemptions += 1
        self._stats.preemptions += 1
        seq.syscall.mark_suspended()
        self._stats.snapshot_s += time.perf_counter() - t0

    def _resume(self, seq: Sequence) -> None:
        t0 = time.perf_counter()
        snap, seq.snapshot = seq.snapshot, None
        seq.slots = self.runner.alloc(seq.num_rows)
        try:
            kv = self.ctx.restore(seq, snap)
        except SnapshotLost as exc:  # KV gone or corrupt: rebuild it from the tokens (exact, see recompute)
            log.warning("request %s: %s; recomputing its KV from tokens", seq.syscall.id, exc)
            recompute_kv(self.runner, seq)
            seq.context_actions.append(f"KV recomputed from {seq.kv_len} tokens ({exc})")
        else:
            for j, beam_kv in enumerate(kv):
                self.runner.cache.write(seq.slots[j], beam_kv)
        seq.status = SeqStatus.RUNNING
        seq.syscall.mark_running()
        self._stats.restore_s += time.perf_counter() - t0

    def _admit(self, seq: Sequence) -> None:
        seq.slots = self.runner.alloc(seq.num_rows)
        seq.status = SeqStatus.RUNNING
        seq.syscall.mark_running()
        hit = self.prefix.take(seq.agent, seq.prompt_ids) if self.prefix is not None else None
        if hit is not None:  # the agent's earlier call computed this prefix: write it, prefill the rest
            seq.prefix_reused, kv = hit
            self.runner.cache.write(seq.slots[0], kv)

    def _forward(self, work: list[Work]) -> list[torch.Tensor | None]:
        """Logits per work item (rows = its chunks); ``None`` for an item whose forward failed (it is failed)."""
        if not work:
            return []
        t0 = time.perf_counter()
        try:
            logits = self.runner.run([c for w in work for c in w.chunks])
            out: list[torch.Tensor | None] = list(logits.split([len(w.chunks) for w in work]))
        except Exception:  # contain it: each sequence's chunks again on their own (see faults)
            log.exception("a forward of %d sequences failed; retrying each alone", len(work))
            out = run_isolated(self.runner, [(w.seq, w.chunks) for w in work], self._fail)
        dt = time.perf_counter() - t0
        n_prefill = sum(len(w.chunks[0].ids) for w in work if w.prefill)
        self._stats.prefill_reused_tokens += sum(w.seq.prefix_reused for w in work if w.prefill)
        rows = sum(len(w.chunks) for w in work if not w.prefill)
        self._stats.prefill_tokens += n_prefill
        if n_prefill:
            self._stats.prefill_s += dt
        else:
            self._stats.decode_s += dt
        if rows:
            self._stats.decode_steps += 1
            self._stats.decode_rows += rows
            self._stats.rows_hist[rows] = self._stats.rows_hist.get(rows, 0) + 1
        return out

    def _advance(self, work: list[Work], logits: list[torch.Tensor | None]) -> None:
        live = [(w, lg) for w, lg in zip(work, logits, strict=True) if lg is not None and w.seq.status is SeqStatus.RUNNING]
        if not live:
            return
        # the step's one host sync: every row's greedy token, or -1 where a logit is NaN/inf
        flat = torch.cat([lg for _, lg in live])
        tops = torch.where(torch.isfinite(flat).all(dim=-1), flat.argmax(dim=-1), -1).tolist()
        row = 0
        for w, lg in live:
            seq, greedy = w.seq, tops[row : row + lg.shape[0]]
            row += lg.shape[0]
            try:
                if w.prefill:
                    seq.kv_len = len(seq.prompt_ids)
                    seq.prefill_computed = seq.kv_len - seq.prefix_reused
                    self.sampler.start(seq)
                else:
                    seq.kv_len += 1
                self._stats.generated_tokens += 1
                if -1 in greedy:
                    require_finite(lg)  # NaN/inf logits fail this request (NumericalError), never sample garbage
                reason = self.sampler.advance(seq, lg, greedy)
                if reason is not None:
                    self._finish(seq, reason)
            except Exception as exc:
                log.exception("request %s failed while sampling", seq.syscall.id)
                self._fail(seq, getattr(exc, "error_type", "EngineError"), f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------------
    # finishing
    # ------------------------------------------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: str) -> None:
        resp = self.prompts.response(seq, reason)
        self._retain(seq)
        self._release(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = resp.finish_reason
        self.scheduler.finished(seq)
        self._stats.completed += 1
        seq.syscall.complete(resp)
        self._record(seq)

    def _retain(self, seq: Sequence) -> None:
        """Keep the finished call's KV for its agent's next call (prompt and answer; beams: the prompt)."""
        if self.prefix is None or not seq.slots:
            return
        tokens = list(seq.prompt_ids)
        if seq.num_beams == 1:  # the KV holds every token but the last one sampled
            tokens += seq.output_ids[0][: seq.kv_len - len(seq.prompt_ids)]
        slot = seq.slots[0]
        self.prefix.retain(seq.agent, tokens, lambda n: self.runner.cache.read(slot, n))

    def _release(self, seq: Sequence) -> None:
        if seq.slots:
            self.runner.release(seq.slots)
            seq.slots = []
        if seq.snapshot is not None:
            self.ctx.release(seq.snapshot.kv)
            seq.snapshot = None

    def _fail(self, seq: Sequence, type_: str, message: str) -> None:
        if seq.slots:  # a failed row may hold non-finite KV; the next owner's masked tail must stay finite
            self.runner.cache.clear(seq.slots)
        self._release(seq)
        seq.status = SeqStatus.FINISHED
        self.scheduler.remove(seq)
        self._stats.failed += 1
        seq.syscall.fail(type_, message)
        self._record(seq)

    def _record(self, seq: Sequence) -> None:
        sc = seq.syscall
        self.records.append(
            {
                "id": sc.id,
                "agent": sc.agent,
                "status": sc.status.value,
                "waiting_time": sc.waiting_time,
                "turnaround_time": sc.turnaround_time,
                "prompt_tokens": len(seq.prompt_ids),
                "completion_tokens": seq.tokens_generated,
                "preemptions": seq.preemptions,
            }
        )

    # ------------------------------------------------------------------------------------------------
    # introspection
    # ------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "steps": s.steps,
            "decode_steps": s.decode_steps,
            "rows_per_decode_step": s.decode_rows / s.decode_steps if s.decode_steps else 0.0,
            "rows_hist": dict(sorted(s.rows_hist.items())),
            "prefill_tokens": s.prefill_tokens,
            "prefill_reused_tokens": s.prefill_reused_tokens,
            "prefix_cache": vars(self.prefix.stats).copy() if self.prefix is not None else None,
            "generated_tokens": s.generated_tokens,
            "busy_s": s.busy_s,
            "decode_s": s.decode_s,
            "prefill_s": s.prefill_s,
            "snapshot_s": s.snapshot_s,
            "restore_s": s.restore_s,
            "tokens_per_s": s.generated_tokens / s.busy_s if s.busy_s else 0.0,
            "completed": s.completed,
            "failed": s.failed,
            "preemptions": s.preemptions,
            "min_rows": self.runner.min_rows,
            "kv": vars(self.ctx.stats).copy(),
            "kv_cache_bytes": self.runner.cache.nbytes,
        }

    def run_until_idle(self, max_steps: int | None = None) -> int:
        """Step until nothing is left (tests and benchmarks drive the engine without a kernel)."""
        n = 0
        while self.has_work():
            if max_steps is not None and n >= max_steps:
                break
            self.step()
            n += 1
        return n
