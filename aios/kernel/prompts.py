"""Text in and out of the engine: chats rendered to token ids, retrieval, summaries, responses.

- ``Prompts.render``: a chat (plus tools) through the model's chat template; templates that ignore
  ``tools`` get them as a system message (``tool_calls.tools_system_message``);
- ``Prompts.with_retrieved``: ``request.retrieve_k`` items from the agent's storage, as a system
  note after the leading system messages;
- ``Prompts.summary_call`` / ``merge_summary``: the summarize context policy (an internal request
  summarizes the turns that do not fit, then the real request runs with the summary);
- ``Prompts.response``: the finished sequence as an ``LLMResponse`` (text cut at a stop string or
  replaced by the chosen choice, tool calls parsed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aios.kernel.sequence import Sequence
from aios.kernel.syscall import LLMRequest, LLMResponse, LLMSyscall
from aios.kernel.tool_calls import (
    ToolCallError,
    parse_tool_calls,
    template_supports_tools,
    tools_system_message,
)

Retriever = Callable[[str, str, int], list[str]]  # (agent, query, k) -> items

SUMMARY_PROMPT = (
    "Summarize the following earlier part of a conversation in a few sentences. "
    "Keep names, numbers, facts and decisions; write only the summary."
)


class PromptError(RuntimeError):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if eos is None:
            continue
        ids.update(eos if isinstance(eos, list | tuple) else [eos])
    return {int(i) for i in ids}


def message_dicts(request: LLMRequest) -> list[dict]:
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


def _after_system(messages: list[dict], note: dict) -> list[dict]:
    n_sys = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    return messages[:n_sys] + [note] + messages[n_sys:]


class Prompts:
    def __init__(self, tokenizer, eos: set[int], window: int):
        self.tokenizer = tokenizer
        self.eos_ids = eos
        self.window = window
        self.tools_native = template_supports_tools(tokenizer)

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of a chat, rendered with the model's chat template (plus the generation prompt)."""
        tok = self.tokenizer
        if tools and not self.tools_native:
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

    @staticmethod
    def with_retrieved(retriever: Retriever | None, syscall: LLMSyscall, messages: list[dict]) -> list[dict]:
        req = syscall.request
        if retriever is None:
            raise PromptError(
                "RetrievalUnavailable", "retrieve_k > 0 but no retriever is set on this engine (no storage manager)"
            )
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        try:
            items = list(retriever(syscall.agent, query, req.retrieve_k))
        except Exception as exc:
            raise PromptError("RetrievalError", f"retriever failed: {type(exc).__name__}: {exc}") from exc
        if not items:
            return messages
        note = {"role": "system", "content": "Relevant items from your storage:\n" + "\n".join(f"- {i}" for i in items)}
        return _after_system(messages, note)

    # -- the summarize policy -------------------------------------------------------------------------
    def summary_call(self, syscall: LLMSyscall, dropped: list[dict]) -> LLMSyscall:
        """The internal request that summarizes ``dropped`` turns for ``syscall``'s agent."""
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in dropped)
        return LLMSyscall(
            agent=syscall.agent,
            request=LLMRequest(
                messages=[{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": transcript}],
                max_new_tokens=max(16, min(128, self.window // 8)),
                priority=syscall.request.priority,
            ),
        )

    @staticmethod
    def merge_summary(messages: list[dict], dropped: list[dict], done: LLMSyscall) -> tuple[list[dict], str]:
        """The messages to run once the summary request ``done`` ended, and a note on what happened."""
        dropped_ids = {id(m) for m in dropped}
        kept = [m for m in messages if id(m) not in dropped_ids]
        if done.result is None:
            return kept, f"summarizing failed ({done.error.type}); dropped {len(dropped)} oldest turn(s)"
        summary = {"role": "system", "content": "Summary of the earlier conversation: " + done.result.text}
        note = f"summarized {len(dropped)} oldest turn(s) into {done.result.completion_tokens} tokens"
        return _after_system(kept, summary), note

    # -- the way out ---------------------------------------------------------------------------------
    def response(self, seq: Sequence, reason: str) -> LLMResponse:
        req = seq.request
        ids = list(seq.output_ids[0])
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        if reason == "choice" and seq.choice_index is not None:
            text = req.choices[seq.choice_index]
        elif reason == "stop" and seq.stop_text is not None:
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
        return LLMResponse(
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
