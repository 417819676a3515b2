"""``LLMEngine``: the local LLM core. Continuous batching with an agent scheduler and exact snapshots.

One engine owns one model. ``add`` (any thread) validates and renders a request and drops it in an
inbox; ``step`` (the kernel's LLM thread only) does one scheduling round:

1. move new requests from the inbox to the scheduler's ready queue;
2. ask the scheduler for a plan: suspend (KV -> context manager), resume (KV -> free slots; no
   prefix recompute), admit (prefill, one sequence at a time at its own length, which yields
   its first token);
3. one batched decode forward for every row that was already running (beams are rows);
4. sample/advance each sequence, finish those that are done (``syscall.complete``).

Why it is exact: see ``model_runner`` (fixed batch shape, per-row attention) and ``context``
(snapshot carries KV, sampler and beam state). A request's tokens depend only on itself, never on
which other requests shared its steps or how often it was suspended.

Failures are contained: an exception while serving one sequence fails that syscall with a typed
error; a failing batched forward fails the sequences in that forward; the engine keeps serving.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from aios.kernel.config import KernelConfig
from aios.kernel.context import ContextManager, ContextTooLong, SnapshotLost, fit_prompt
from aios.kernel.faults import decode_isolated, require_finite
from aios.kernel.model_runner import ModelRunner
from aios.kernel.recompute import recompute_kv
from aios.kernel.scheduler import Scheduler, make_policy
from aios.kernel.sequence import SeqStatus, Sequence
from aios.kernel.syscall import LLMRequest, LLMResponse, LLMSyscall
from aios.kernel.tool_calls import (
    ToolCallError,
    parse_tool_calls,
    template_supports_tools,
    tools_system_message,
)

log = logging.getLogger("aios.engine")

Retriever = Callable[[str, str, int], list[str]]  # (agent, query, k) -> items
_END = -1  # key marking a complete choice in the choices trie

SUMMARY_PROMPT = (
    "Summarize the following earlier part of a conversation in a few sentences. "
    "Keep names, numbers, facts and decisions; write only the summary."
)


class EngineError(RuntimeError):
    error_type = "EngineError"


@dataclass
class EngineStats:
    steps: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # real rows over all decode steps
    rows_hist: dict[int, int] = field(default_factory=dict)
    prefill_tokens: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0
    decode_s: float = 0.0
    prefill_s: float = 0.0
    snapshot_s: float = 0.0
    restore_s: float = 0.0
    completed: int = 0
    failed: int = 0
    preemptions: int = 0


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
        mcfg = model.config
        self.window = int(context_window or getattr(mcfg, "max_position_embeddings", 2048))
        self.runner = ModelRunner(model, self.config.max_batch_size, self.config.batch_invariant, max_len=self.window)
        self.policy = make_policy(
            self.config.scheduler, self.config.quantum, self.config.aging, self.config.max_wait
        )
        self.scheduler = Scheduler(self.policy, self.config.max_batch_size, self.config.max_batch_tokens)
        self.ctx = ContextManager(self.config.kv_memory_budget_mb, self.config.spill_dir, device=self.runner.device)
        self.eos_ids = self._eos_ids()
        self._tools_native = template_supports_tools(tokenizer)
        self._inbox: deque[Sequence] = deque()
        self._lock = threading.RLock()
        self._closed = False
        self._stats = EngineStats()
        self.records: list[dict[str, Any]] = []  # per finished request (benchmarks read these)
        # per step: agents holding rows (bounded; tests and debugging read the schedule from it)
        self.trace: deque[tuple[str, ...]] = deque(maxlen=trace_len)

    # ------------------------------------------------------------------------------------------------
    # set-up helpers
    # ------------------------------------------------------------------------------------------------
    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            eos = getattr(src, "eos_token_id", None)
            if eos is None:
                continue
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
        return {int(i) for i in ids}

    @staticmethod
    def _message_dicts(request: LLMRequest) -> list[dict]:
        out = []
        for m in request.messages:
            d: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.name:
                d["name"] = m.name
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in m.tool_calls
                ]
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            out.append(d)
        return out

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of a chat, rendered with the model's chat template (plus the generation prompt)."""
        tok = self.tokenizer
        if tools and not self._tools_native:
            lead = [m for m in messages if m["role"] == "system"]
            rest = [m for m in messages if m["role"] != "system"]
            messages = lead + [tools_system_message(tools)] + rest
            tools = None
        if getattr(tok, "chat_template", None):
            kwargs = {"tools": tools} if tools else {}
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
        else:  # a base model without a template: a plain transcript
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return tok(text, add_special_tokens=False)["input_ids"]

    def _choice_trie(self, choices: list[str]) -> dict:
        root: dict = {}
        for ci, choice in enumerate(choices):
            node = root
            for t in self.tokenizer(choice, add_special_tokens=False)["input_ids"]:
                node = node.setdefault(int(t), {})
            node.setdefault(_END, ci)
        return root

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

    def _add(
        self,
        syscall: LLMSyscall,
        policy: str,
        extra_actions: list[str] | None = None,
        messages: list[dict] | None = None,
    ) -> None:
        if self._closed:
            raise EngineError("engine is closed")
        req = syscall.request
        if req.num_beams > self.config.max_batch_size:
            raise ValueError(f"num_beams={req.num_beams} exceeds max_batch_size={self.config.max_batch_size}")
        actions = list(extra_actions or [])
        if messages is None:
            messages = self._message_dicts(req)
            if req.retrieve_k > 0:
                messages = self._with_retrieved(syscall, messages)
                actions.append(f"retrieved up to {req.retrieve_k} stored item(s)")
        budget = self.window - req.max_new_tokens
        if budget < 1:
            raise ContextTooLong(
                f"max_new_tokens={req.max_new_tokens} does not fit the model's context window of {self.window} tokens"
            )
        fit = fit_prompt(lambda m: self.render(m, req.tools), self.tokenizer, messages, budget)
        if fit.dropped and policy == "summarize":
            self._summarize_then_add(syscall, messages, fit, actions)
            return
        seq = Sequence(syscall=syscall, prompt_ids=fit.prompt_ids, max_new_tokens=req.max_new_tokens, arrival=time.monotonic())
        seq.num_beams = req.num_beams
        seq.context_actions = actions + fit.actions
        if fit.actions:
            log.info("request %s: %s", syscall.id, "; ".join(fit.actions))
        if req.temperature > 0:
            seq.seed = req.seed if req.seed is not None else secrets.randbits(63)
            seq.generator = torch.Generator(device="cpu").manual_seed(seq.seed)
        else:
            seq.seed = req.seed
        if req.choices:
            seq.choice_trie = self._choice_trie(req.choices)
        with self._lock:
            self._inbox.append(seq)

    def _with_retrieved(self, syscall: LLMSyscall, messages: list[dict]) -> list[dict]:
        req = syscall.request
        if self.retriever is None:
            err = EngineError("retrieve_k > 0 but no retriever is set on this engine (no storage manager)")
            err.error_type = "RetrievalUnavailable"
            raise err
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        try:
            items = list(self.retriever(syscall.agent, query, req.retrieve_k))
        except Exception as exc:
            err = EngineError(f"retriever failed: {type(exc).__name__}: {exc}")
            err.error_type = "RetrievalError"
            raise err from exc
        if not items:
            return messages
        note = {"role": "system", "content": "Relevant items from your storage:\n" + "\n".join(f"- {i}" for i in items)}
        n_sys = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        return messages[:n_sys] + [note] + messages[n_sys:]

    def _summarize_then_add(self, syscall: LLMSyscall, messages: list[dict], fit, actions: list[str]) -> None:
        """The summarize policy: an internal request summarizes the dropped turns, then the real one is queued."""
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in fit.dropped)
        summary_max = max(16, min(128, self.window // 8))
        inner = LLMSyscall(
            agent=syscall.agent,
            request=LLMRequest(
                messages=[{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": transcript}],
                max_new_tokens=summary_max,
                priority=syscall.request.priority,
            ),
        )
        dropped_ids = {id(m) for m in fit.dropped}

        def _resume(done: LLMSyscall) -> None:
            try:
                kept = [m for m in messages if id(m) not in dropped_ids]
                n_sys = next((i for i, m in enumerate(kept) if m["role"] != "system"), len(kept))
                if done.result is not None:
                    summary = {"role": "system", "content": "Summary of the earlier conversation: " + done.result.text}
                    note = f"summarized {len(fit.dropped)} oldest turn(s) into {done.result.completion_tokens} tokens"
                    kept = kept[:n_sys] + [summary] + kept[n_sys:]
                else:
                    note = f"summarizing failed ({done.error.type}); dropped {len(fit.dropped)} oldest turn(s)"
                # queue the real request with the summarized messages; truncate handles any remaining excess
                self._add(syscall, policy="truncate", extra_actions=actions + [note], messages=kept)
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

    # ------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------
    def step(self) -> bool:
        t0 = time.perf_counter()
        with self._lock:
            new = list(self._inbox)
            self._inbox.clear()
        now = time.monotonic()
        for seq in new:
            self.scheduler.add(seq, now)
        for seq in [s for s in self.scheduler.running + self.scheduler.ready if s.syscall.finished]:
            self._fail(seq, "Cancelled", "cancelled")  # ended from outside: free its rows and snapshot
        if not self.scheduler.has_work():
            return False
        plan = self.scheduler.schedule(now)
        for seq in plan.suspend:
            self._guard(seq, self._suspend)
        for seq in plan.resume:
            self._guard(seq, self._resume)
        self.trace.append(tuple(s.agent for s in self.scheduler.running))
        decoding = [s for s in self.scheduler.running if s.status is SeqStatus.RUNNING]
        for seq in plan.admit:
            self._guard(seq, self._prefill)
        if decoding:
            self._decode(decoding)
        self._stats.steps += 1
        self._stats.busy_s += time.perf_counter() - t0
        return True

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

    def _prefill(self, seq: Sequence) -> None:
        t0 = time.perf_counter()
        seq.slots = self.runner.alloc(seq.num_rows)
        seq.status = SeqStatus.RUNNING
        seq.syscall.mark_running()
        logits = self.runner.prefill(seq.slots[0], seq.prompt_ids)
        seq.kv_len = len(seq.prompt_ids)
        seq.prefill_computed = len(seq.prompt_ids)
        seq.output_ids, seq.beam_scores = [[]], [0.0]
        seq.choice_nodes = [seq.choice_trie] if seq.choice_trie is not None else []
        self._stats.prefill_tokens += len(seq.prompt_ids)
        self._stats.prefill_s += time.perf_counter() - t0
        self._advance(seq, logits[None])

    def _decode(self, seqs: list[Sequence]) -> None:
        t0 = time.perf_counter()
        rows = [(s.slots[j], ids[-1], s.kv_len) for s in seqs for j, ids in enumerate(s.output_ids)]
        try:
            logits = self.runner.decode(rows)
        except Exception:  # contain it: each request's rows again on their own (see faults)
            log.exception("batched decode failed; retrying its %d requests one by one", len(seqs))
            seqs, logits = decode_isolated(self.runner, seqs, self._fail)
            if not seqs:
                return
        self._stats.decode_steps += 1
        self._stats.decode_rows += len(rows)
        self._stats.rows_hist[len(rows)] = self._stats.rows_hist.get(len(rows), 0) + 1
        self._stats.decode_s += time.perf_counter() - t0
        i = 0
        for s in seqs:
            n = len(s.output_ids)
            s.kv_len += 1
            self._guard_advance(s, logits[i : i + n])
            i += n

    def _guard_advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        try:
            self._advance(seq, logits)
        except Exception as exc:
            log.exception("request %s failed while sampling", seq.syscall.id)
            self._fail(seq, getattr(exc, "error_type", "EngineError"), f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------------
    # sampling and finishing
    # ------------------------------------------------------------------------------------------------
    def _constrain(self, seq: Sequence, beam: int, logits: torch.Tensor) -> torch.Tensor:
        if seq.choice_trie is None:
            return logits
        node = seq.choice_nodes[beam]
        allowed = [t for t in node if t != _END]
        if _END in node:
            allowed += sorted(self.eos_ids)
        mask = torch.full_like(logits, float("-inf"))
        mask[torch.tensor(allowed, dtype=torch.long, device=logits.device)] = 0.0
        return logits + mask

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> int:
        req = seq.request
        if req.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / req.temperature
        if req.top_k is not None and req.top_k < logits.numel():
            kth = torch.topk(logits, req.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if req.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            remove = (torch.cumsum(probs, dim=-1) - probs) > req.top_p
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Consume one row of logits per live beam: pick the next token(s), finish if done."""
        require_finite(logits)  # NaN/inf logits fail this request (NumericalError), never sample garbage
        seq.quantum_used += 1
        self._stats.generated_tokens += 1
        if seq.num_beams > 1:
            self._beam_step(seq, logits)
            return
        tok = self._sample(seq, self._constrain(seq, 0, logits[0]))
        ids = seq.output_ids[0]
        ids.append(tok)
        seq.syscall.emit_token(tok)
        reason = None
        if seq.choice_trie is not None:
            node = seq.choice_nodes[0]
            if tok in self.eos_ids and _END in node:
                reason, seq.choice_index = "choice", node[_END]
            else:
                node = node[tok]
                seq.choice_nodes[0] = node
                if _END in node and len(node) == 1:
                    reason, seq.choice_index = "choice", node[_END]
        elif tok in self.eos_ids:
            reason = "eos"
        if reason is None and seq.request.stop and self._hit_stop(seq):
            reason = "stop"
        if reason is None and (len(ids) >= seq.max_new_tokens or seq.kv_len + 1 >= self.window):
            reason = "length"
        if reason is not None:
            self._finish(seq, reason)

    def _hit_stop(self, seq: Sequence) -> bool:
        """Incremental stop-string search: only text past ``stop_scan`` (minus overlap) is searched."""
        text = self.tokenizer.decode(seq.output_ids[0], skip_special_tokens=True)
        longest = max(len(s) for s in seq.request.stop)
        start = max(0, seq.stop_scan - longest + 1)
        hits = [i for i in (text.find(s, start) for s in seq.request.stop) if i >= 0]
        seq.stop_scan = len(text)
        if hits:
            seq.stop_text = text[: min(hits)]
            return True
        return False

    def _beam_step(self, seq: Sequence, logits: torch.Tensor) -> None:
        width, vocab = seq.num_beams, logits.shape[-1]
        lp = seq.request.length_penalty
        rows = torch.stack([self._constrain(seq, j, logits[j]) for j in range(logits.shape[0])])
        logp = torch.log_softmax(rows, dim=-1)
        cand = logp + torch.tensor(seq.beam_scores, dtype=logp.dtype)[:, None]
        vals, idx = torch.topk(cand.view(-1), min(2 * width, cand.numel()))
        new_len = len(seq.output_ids[0]) + 1
        new: list[tuple[int, int, float]] = []
        for rank, (v, ix) in enumerate(zip(vals.tolist(), idx.tolist(), strict=True)):
            if v == float("-inf"):
                break
            b, tok = divmod(ix, vocab)
            ended, reason, kept = False, "eos", seq.output_ids[b] + [tok]
            if seq.choice_trie is not None:
                node = seq.choice_nodes[b]
                if tok in self.eos_ids and _END in node:
                    ended, reason, kept = True, "choice", seq.output_ids[b]
                elif _END in node.get(tok, {}) and len(node[tok]) == 1:
                    ended, reason = True, "choice"
            elif tok in self.eos_ids:
                ended, kept = True, seq.output_ids[b]
            if ended:
                if rank < width:
                    seq.finished_beams.append((v / (new_len**lp), kept, reason))
                continue
            new.append((b, tok, v))
            if len(new) == width:
                break
        # reorder: beam j continues from parent b (its KV must be the parent's)
        src = [seq.slots[b] for j, (b, _, _) in enumerate(new) if b != j]
        dst = [seq.slots[j] for j, (b, _, _) in enumerate(new) if b != j]
        self.runner.cache.copy_slots(src, dst, seq.kv_len)
        if seq.choice_trie is not None:
            seq.choice_nodes = [seq.choice_nodes[b][tok] for b, tok, _ in new]
        seq.output_ids = [seq.output_ids[b] + [tok] for b, tok, _ in new]
        seq.beam_scores = [v for _, _, v in new]
        done = not new
        if new and (new_len >= seq.max_new_tokens or seq.kv_len + 1 >= self.window):
            for ids, v in zip(seq.output_ids, seq.beam_scores, strict=True):
                seq.finished_beams.append((v / (new_len**lp), ids, "length"))
            done = True
        elif new and len(seq.finished_beams) >= width:
            worst_kept = sorted((h[0] for h in seq.finished_beams), reverse=True)[width - 1]
            done = max(seq.beam_scores) / (new_len**lp) <= worst_kept
        if done:
            if not seq.finished_beams:
                raise EngineError("beam search ended without any hypothesis (all continuations masked)")
            score, ids, reason = max(seq.finished_beams, key=lambda h: h[0])
            seq.output_ids = [list(ids)]
            seq.beam_score = score
            if reason == "choice":
                node = seq.choice_trie
                for t in ids:
                    node = node[t]
                seq.choice_index = node[_END]
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str) -> None:
        req = seq.request
        ids = list(seq.output_ids[0])
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        if reason == "choice" and seq.choice_index is not None:
            text = req.choices[seq.choice_index]
        elif reason == "stop" and getattr(seq, "stop_text", None) is not None:
            text = seq.stop_text
        else:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if seq.num_beams > 1 and req.stop:  # beams are not cut while running: trim the winner
                cuts = [i for i in (text.find(s) for s in req.stop) if i >= 0]
                if cuts:
                    text, reason = text[: min(cuts)], "stop"
        tool_calls, tool_err = [], None
        if req.tools:
            try:
                tool_calls = parse_tool_calls(text)
            except ToolCallError as exc:
                tool_err = str(exc)
        resp = LLMResponse(
            text=text,
            token_ids=ids,
            finish_reason=reason,
            tool_calls=tool_calls,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids[0]),
            preemptions=seq.preemptions,
            beam_score=seq.beam_score,
            seed=seq.seed,
            context_actions=seq.context_actions,
            tool_call_error=tool_err,
        )
        self._release(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        self.scheduler.finished(seq)
        self._stats.completed += 1
        seq.syscall.complete(resp)
        self._record(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.slots:
            self.runner.release(seq.slots)
            seq.slots = []
        if seq.snapshot is not None:
            self.ctx.release(seq.snapshot.kv)
            seq.snapshot = None

    def _fail(self, seq: Sequence, type_: str, message: str) -> None:
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
