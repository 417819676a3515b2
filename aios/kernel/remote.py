"""The remote LLM core: the kernel's scheduler in front of an OpenAI-compatible server.

``KernelConfig(model="openai:<base_url>#<model>")`` selects it (vLLM, SGLang, the llama.cpp
server, ``transformers serve`` ...). The server does the arithmetic; the kernel still decides
*who runs*: the same policy classes as the local engine (``aios.kernel.scheduler``) pick which
requests hold one of ``max_batch_size`` "rows", and a row here is one open streaming request.

Why this shape
--------------
- Streaming (SSE over httpx) lets the kernel count tokens as they arrive, so a round-robin
  quantum, SJF's remaining length and priority preemption all work as they do locally.
- Suspension closes the stream (servers stop generating when the client goes away) and keeps the
  partial output. Resumption sends the prompt **plus the partial assistant text** as a
  continuation and asks for the remaining tokens. There is no remote KV snapshot, so what is
  exact differs from the local engine; see ``docs/remote.md``:
  * greedy decoding continues exactly when re-tokenizing the partial text gives the tokens the
    model produced (the usual case; a token boundary that re-tokenizes differently can change
    the continuation) and when the server is numerically deterministic for the request;
  * seeded sampling does not continue the same random stream; beam search and constrained
    ``choices`` are not offered remotely (the request fails with ``Unsupported``);
  * the prefix is recomputed on resume unless the server caches prefixes (vLLM, SGLang do).
- Priorities travel with the request: a non-zero ``request.priority`` is sent as the body's
  ``priority`` field (vLLM's extension; lower is served first, as in aios). The kernel's policy
  decides which requests hold rows; a server started with ``--scheduling-policy priority`` then
  also orders what it runs by the same numbers (vLLM rejects a non-zero priority when started
  with its default FCFS policy: pass ``send_priority=False`` for such a server).
- Two ways to talk to the server. **completions** (the default when we can load the model's
  tokenizer locally): we render the chat template ourselves and use ``/v1/completions`` with a raw
  prompt, so prompt + partial text is exactly the text the model saw. **chat** (no local
  tokenizer): ``/v1/chat/completions``; a resume appends the partial text as a final assistant
  message with ``continue_final_message`` (a vLLM/SGLang extension).
- Each stream runs on its own small thread that only reads bytes and pushes events into a queue;
  all scheduling state is touched by the kernel's LLM thread alone (``step``), as in the engine.

Token counts: each streamed chunk is counted as one token (servers send one token per chunk; the
final usage report, when the server sends one, replaces the estimate in the response).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from aios.kernel.config import KernelConfig
from aios.kernel.scheduler import Scheduler, make_policy
from aios.kernel.sequence import SeqStatus, Sequence
from aios.kernel.syscall import LLMResponse, LLMSyscall

log = logging.getLogger("aios.remote")


def parse_remote_model(model: str) -> tuple[str, str]:
    """``openai:<base_url>#<model>`` -> (base_url without trailing slash, model name)."""
    if not model.startswith("openai:"):
        raise ValueError(f"not a remote model spec: {model!r}")
    rest = model[len("openai:") :]
    base, sep, name = rest.partition("#")
    if not sep or not name or not base.startswith(("http://", "https://")):
        raise ValueError(f"remote model must look like openai:<http(s) base_url>#<model>, got {model!r}")
    return base.rstrip("/"), name


def _load_tokenizer(name: str, cache_dir: Any) -> Any | None:
    """The model's tokenizer if we can get it locally (embedded alias, local path, hub cache)."""
    try:
        from transformers import AutoTokenizer

        from aios.kernel.llm import EMBEDDED_MODELS, model_dir

        src = model_dir(name, cache_dir) if name in EMBEDDED_MODELS else name
        tok = AutoTokenizer.from_pretrained(src)
        return tok if getattr(tok, "chat_template", None) else None
    except Exception as exc:  # no tokenizer here: use the chat endpoint
        log.info("no local tokenizer for %s (%s); using /v1/chat/completions", name, exc)
        return None


@dataclass(frozen=True)
class _Event:
    """What a stream's reader thread tells the core: which sequence, and which of its segments."""

    seq_id: int
    gen: int


@dataclass(frozen=True)
class _Text(_Event):
    text: str
    token_ids: tuple[int, ...] | None = None  # the chunk's tokens, where the server sends them (vLLM)
    prompt_ids: tuple[int, ...] | None = None  # the server's prompt tokens (vLLM: the first chunk only)


@dataclass(frozen=True)
class _Usage(_Event):
    usage: dict[str, Any]


@dataclass(frozen=True)
class _Finish(_Event):
    reason: str


@dataclass(frozen=True)
class _End(_Event):
    pass


@dataclass(frozen=True)
class _Error(_Event):
    message: str


_StreamEvent = _Text | _Usage | _Finish | _End | _Error


@dataclass
class _Stream:
    """One open streaming request (a running sequence's "rows")."""

    gen: int  # which segment of its sequence this is (events of older segments are dropped)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class _Remote:
    """Per-sequence remote state, kept next to the engine's ``Sequence``."""

    prompt: str | list[dict[str, Any]]  # rendered prompt (completions) or messages (chat)
    text: str = ""  # the partial output so far, across suspensions
    prompt_ids: list[int] | None = None  # the server's own tokens of the prompt (token-id servers)
    token_ids: list[int] | None = field(default_factory=list)  # every generated token; None once a chunk came without
    held: int = 0  # trailing tokens whose text the server holds back (they end inside a character)
    segments: int = 0
    stream: _Stream | None = None
    usage_completion: int = 0  # from the server's usage reports, when sent
    usage_prompt: int = 0
    usage_seen: bool = False
    first_token: bool = False


class RemoteLLMCore:
    """An ``LLMCore`` for OpenAI-compatible servers, scheduled by the kernel's policies."""

    def __init__(
        self,
        config: KernelConfig,
        *,
        tokenizer: Any | None = None,
        mode: str = "auto",
        client: httpx.Client | None = None,
        timeout: float = 600.0,
        api_key: str | None = None,
        send_priority: bool = True,
        token_ids: bool | None = None,
    ):
        self.config = config
        self.send_priority = send_priority
        # Token-id continuation (vLLM's ``return_token_ids``): a suspended request resumes from the
        # server's own prompt tokens plus the tokens it generated, not from re-tokenized text (a cut
        # inside a multi-token character re-tokenizes differently and changed a greedy answer).
        # None: on when ``/models`` says the server is vLLM (other servers, ``transformers serve``
        # among them, refuse unknown fields).
        self._token_ids = token_ids
        self.regenerated = 0  # tokens dropped at a suspension inside a character, to be generated again
        self.base_url, self.model = parse_remote_model(config.model)
        if mode not in {"auto", "completions", "chat"}:
            raise ValueError("mode must be auto, completions or chat")
        if tokenizer is None and mode != "chat":
            tokenizer = _load_tokenizer(self.model, getattr(config, "cache_dir", None))
        if mode == "completions" and tokenizer is None:
            raise ValueError(f"completions mode needs the tokenizer of {self.model!r}")
        self.tokenizer = tokenizer
        self.mode = (
            "completions"
            if (mode == "auto" and tokenizer is not None)
            else ("chat" if mode == "auto" else mode)
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers=headers,
            limits=httpx.Limits(max_connections=max(4, 2 * config.max_batch_size)),
        )
        self.policy = make_policy(
            config.scheduler, config.quantum, getattr(config, "aging", 1.0), getattr(config, "max_wait", 30.0)
        )
        # The server owns its own batching and memory: only the row limit applies here.
        self.scheduler = Scheduler(self.policy, max_rows=config.max_batch_size, max_tokens=1 << 30)
        self.seq_ids = itertools.count()
        self._inbox: queue.SimpleQueue[LLMSyscall] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[_StreamEvent] = queue.SimpleQueue()
        self._state: dict[int, _Remote] = {}
        self._by_id: dict[int, Sequence] = {}
        self._closed = False

    # -- LLMCore protocol --------------------------------------------------------------------------
    def add(self, syscall: LLMSyscall) -> None:
        """Called from agent threads: hand the syscall to the LLM thread."""
        self._inbox.put(syscall)

    def has_work(self) -> bool:
        return not self._inbox.empty() or self.scheduler.has_work()

    def step(self) -> bool:
        """Admit new requests, apply the policy's plan, then handle stream events for a moment."""
        now = time.monotonic()
        did = self._drain_inbox(now)
        plan = self.scheduler.schedule(now)
        for seq in plan.suspend:
            self._suspend(seq)
        for seq in plan.resume + plan.admit:
            self._start(seq)
        did = did or bool(plan)
        if not self.scheduler.running:
            return did
        return self._pump(timeout=0.05) or did

    def close(self) -> None:
        self._closed = True
        for st in self._state.values():
            if st.stream is not None:
                st.stream.cancel.set()
        for seq in list(self.scheduler.running) + list(self.scheduler.ready):
            seq.syscall.fail("Aborted", "the kernel shut down")
        while True:
            try:
                self._inbox.get_nowait().fail("Aborted", "the kernel shut down")
            except queue.Empty:
                break
        self.client.close()

    # -- requests in -------------------------------------------------------------------------------
    def _drain_inbox(self, now: float) -> bool:
        did = False
        while True:
            try:
                sc = self._inbox.get_nowait()
            except queue.Empty:
                return did
            did = True
            req = sc.request
            if req.num_beams > 1 or req.choices:
                sc.fail("Unsupported", "beam search and choices are not available with a remote backend")
                continue
            try:
                prompt, prompt_ids = self._render(sc)
            except Exception as exc:
                sc.fail("InvalidRequest", f"cannot render the prompt: {exc}")
                continue
            seq = Sequence(syscall=sc, prompt_ids=prompt_ids, max_new_tokens=req.max_new_tokens, arrival=now, seq_id=next(self.seq_ids))
            self._state[seq.seq_id] = _Remote(prompt=prompt)
            self._by_id[seq.seq_id] = seq
            self.scheduler.add(seq, now)

    def _wants_token_ids(self) -> bool:
        if self._token_ids is None:
            try:
                resp = self.client.get(self.base_url + "/models", timeout=10.0)
                owners = {m.get("owned_by") for m in resp.json().get("data", [])} if resp.status_code == 200 else set()
            except Exception:  # noqa: BLE001 - a capability probe: any failure means "not vLLM"
                owners = set()
            self._token_ids = "vllm" in owners
        return self.mode == "completions" and self._token_ids

    def _render(self, sc: LLMSyscall) -> tuple[str | list[dict[str, Any]], list[int]]:
        messages = [m.model_dump(exclude_none=True, exclude={"tool_calls"}) for m in sc.request.messages]
        if self.mode == "chat":
            return messages, []
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if sc.request.tools:
            kwargs["tools"] = sc.request.tools
        text = self.tokenizer.apply_chat_template(messages, **kwargs)
        return text, self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- streams -----------------------------------------------------------------------------------
    def _body(self, seq: Sequence, st: _Remote) -> tuple[str, dict[str, Any]]:
        req = seq.request
        remaining = max(1, seq.max_new_tokens - seq.tokens_generated)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": remaining,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if req.top_k is not None:
            body["top_k"] = req.top_k
        if req.stop:
            body["stop"] = req.stop
        if self.send_priority and req.priority:
            body["priority"] = req.priority
        if self.mode == "completions":
            body["prompt"] = st.prompt + st.text
            if self._wants_token_ids():
                body["return_token_ids"] = True
                if st.token_ids and st.prompt_ids is not None:
                    body["prompt"] = st.prompt_ids + st.token_ids  # exactly what the model saw
            return "/completions", body
        messages = list(st.prompt)
        if st.text:
            messages.append({"role": "assistant", "content": st.text})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body["messages"] = messages
        if req.tools:
            body["tools"] = req.tools
        return "/chat/completions", body

    def _start(self, seq: Sequence) -> None:
        st = self._state[seq.seq_id]
        st.segments += 1
        stream = _Stream(gen=st.segments)
        st.stream = stream
        path, body = self._body(seq, st)
        seq.status = SeqStatus.RUNNING
        if seq.syscall.scheduled_at is not None:  # resumed: it is running again
            seq.syscall.mark_running()
        stream.thread = threading.Thread(
            target=self._stream_worker,
            args=(seq.seq_id, stream, self.base_url + path, body),
            name=f"aios-remote-{seq.seq_id}",
            daemon=True,
        )
        stream.thread.start()

    def _suspend(self, seq: Sequence) -> None:
        st = self._state[seq.seq_id]
        if st.stream is not None:
            st.stream.cancel.set()
            st.stream = None
        if st.held and st.token_ids:
            # Cut inside a character (a preemption, not a slice's end): vLLM, given a prompt that ends
            # inside one, streams the whole decoded prompt as output text (measured, 0.32). Drop those
            # tokens instead; greedy decoding from the same tokens gives them again on resume.
            del st.token_ids[-st.held :]
            del seq.output_ids[0][-st.held :]
            self.regenerated += st.held
            st.held = 0
        seq.status = SeqStatus.SUSPENDED
        seq.preemptions += 1
        seq.syscall.mark_suspended()

    def _stream_worker(self, seq_id: int, stream: _Stream, url: str, body: dict[str, Any]) -> None:
        """Read one SSE stream and turn it into events. Runs on its own thread; touches no state."""
        put = self._events.put
        try:
            with self.client.stream("POST", url, json=body) as resp:
                if resp.status_code >= 400:
                    detail = resp.read().decode(errors="replace")[:500]
                    put(_Error(seq_id, stream.gen, f"HTTP {resp.status_code}: {detail}"))
                    return
                for line in resp.iter_lines():
                    if stream.cancel.is_set():
                        return  # leaving the block closes the connection: the server stops
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        obj = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    if "error" in obj:
                        put(_Error(seq_id, stream.gen, str(obj["error"])[:500]))
                        return
                    if obj.get("usage"):
                        put(_Usage(seq_id, stream.gen, obj["usage"]))
                    for choice in obj.get("choices") or []:
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content")
                        ids, prompt_ids = choice.get("token_ids"), choice.get("prompt_token_ids")
                        if text or ids:  # a token that ends inside a character comes with ids, no text
                            put(_Text(seq_id, stream.gen, text or "", _ints(ids), _ints(prompt_ids)))
                        if choice.get("finish_reason"):
                            put(_Finish(seq_id, stream.gen, choice["finish_reason"]))
            put(_End(seq_id, stream.gen))
        except Exception as exc:  # connection refused, reset, timeout: the request fails, not the kernel
            if not stream.cancel.is_set():
                put(_Error(seq_id, stream.gen, f"{type(exc).__name__}: {exc}"))

    # -- events --------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        """Handle stream events: block up to ``timeout`` for the first, then take what is queued."""
        try:
            ev = self._events.get(timeout=timeout)
        except queue.Empty:
            return False
        self._handle(ev)
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return True
            self._handle(ev)

    def _handle(self, ev: _StreamEvent) -> None:
        seq = self._by_id.get(ev.seq_id)
        st = self._state.get(ev.seq_id)
        if seq is None or st is None or st.stream is None or st.stream.gen != ev.gen:
            return  # a finished sequence, or a stream we cancelled
        match ev:
            case _Text(text=text, token_ids=ids, prompt_ids=prompt_ids):
                if not st.first_token:
                    st.first_token = True
                    seq.syscall.mark_running()  # waiting time ends when the first token arrives
                if prompt_ids is not None and st.prompt_ids is None:
                    st.prompt_ids = list(prompt_ids)
                st.text += text
                if ids is None or st.token_ids is None:
                    st.token_ids = None
                    seq.output_ids[0].append(-1)  # no ids from this server: one token per chunk
                    seq.quantum_used += 1
                else:
                    st.token_ids += ids
                    seq.output_ids[0].extend(ids)
                    # A token that ends inside a character counts against the quantum only once the
                    # character is complete: a slice never ends inside one (a 1-token quantum would
                    # otherwise cut an emoji forever, see _suspend).
                    if text:
                        seq.quantum_used += st.held + len(ids)
                        st.held = 0
                    else:
                        st.held += len(ids)
                hit = self._stop_hit(seq, st)
                if hit is not None:
                    st.text = st.text[:hit]
                    self._finish(seq, "stop")
                elif seq.tokens_generated >= seq.max_new_tokens:
                    self._finish(seq, "length")
            case _Usage(usage=usage):
                st.usage_seen = True
                st.usage_completion += int(usage.get("completion_tokens") or 0)
                if not st.usage_prompt:
                    st.usage_prompt = int(usage.get("prompt_tokens") or 0)
            case _Finish(reason="length"):
                # the server used up this segment's budget: the whole request's budget is spent
                self._finish(seq, "length")
            case _Finish():
                hit = self._stop_hit(seq, st)
                self._finish(seq, "stop" if seq.request.stop and hit is not None else "eos")
            case _End():
                self._finish(seq, "eos")
            case _Error(message=message):
                self._fail(seq, "RemoteError", message)

    @staticmethod
    def _stop_hit(seq: Sequence, st: _Remote) -> int | None:
        hits = [i for i in (st.text.find(s) for s in seq.request.stop) if i >= 0]
        return min(hits) if hits else None

    def _cleanup(self, seq: Sequence) -> _Remote:
        st = self._state.pop(seq.seq_id)
        self._by_id.pop(seq.seq_id, None)
        if st.stream is not None:
            st.stream.cancel.set()
            st.stream = None
        seq.status = SeqStatus.FINISHED
        self.scheduler.finished(seq)
        return st

    def _finish(self, seq: Sequence, reason: str) -> None:
        st = self._cleanup(seq)
        text = st.text
        if st.token_ids and reason != "stop" and seq.tokens_generated == len(st.token_ids):
            ids = list(st.token_ids)  # the server's own tokens (a stop string cut the text, not them)
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if self.tokenizer is not None else []
        n = seq.tokens_generated  # one per streamed chunk
        if st.usage_seen and st.segments == 1:  # cancelled segments never report usage
            n = st.usage_completion or n
        resp = LLMResponse(
            text=text,
            token_ids=ids,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=st.usage_prompt or len(seq.prompt_ids),
            completion_tokens=n,
            preemptions=seq.preemptions,
        )
        if seq.request.tools and reason != "length":
            try:
                from aios.kernel.tool_calls import parse_tool_calls

                resp.tool_calls = parse_tool_calls(text)
            except Exception:  # a model that talks instead of calling: no tool calls
                pass
        seq.syscall.complete(resp)

    def _fail(self, seq: Sequence, type_: str, message: str) -> None:
        self._cleanup(seq)
        seq.syscall.fail(type_, message)


def _ints(v: Any) -> tuple[int, ...] | None:
    return tuple(int(i) for i in v) if isinstance(v, list) else None
