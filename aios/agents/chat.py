"""Chat agent: one or two plain LLM requests. The filler of workload mixes and the CLI's default."""

from __future__ import annotations

from typing import Any

from aios.agents.base import ExampleAgent

SYSTEM = "You are a helpful assistant."


class ChatAgent(ExampleAgent):
    description = "answers a question (1 request), optionally with a one-line summary (2nd request)"
    default_task = "Explain in a few sentences why the sky is blue."

    def __init__(self, name: str | None = None, *, tokens: int = 64, summarize: bool = False, **kw: Any):
        super().__init__(name, **kw)
        self.tokens = tokens
        self.summarize = summarize

    def run(self, task: Any = None) -> dict[str, Any]:
        question = self.task_or_default(task)
        answer = self.ask(SYSTEM, question, tokens=self.tokens)
        out = {"answer": answer, "summary": answer[:80]}
        if self.summarize:
            out["summary"] = self.ask(SYSTEM, f"Summarize in one line:\n{answer[:800]}", tokens=24)
        return out
