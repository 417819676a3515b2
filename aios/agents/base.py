"""Common base of the example agents: a default task, token budgets and a chat log.

The paper's agents each send 2-3 LLM requests per run; ours do too. Budgets are small because the
embedded model runs on a CPU; ``scale`` multiplies them (the benchmark and tests change it). Each
request also passes ``expected_tokens`` = its budget so shortest-job-first has a hint.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aios.sdk.agent import Agent
from aios.sdk.runtime import ChatResult


class ExampleAgent(Agent):
    default_task: ClassVar[str] = ""

    def __init__(self, name: str | None = None, *, scale: float = 1.0, priority: int = 0):
        super().__init__(name or type(self).__name__.removesuffix("Agent").lower())
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale
        self.priority = priority
        self.transcript: list[dict[str, Any]] = []

    def budget(self, tokens: int) -> int:
        return max(1, round(tokens * self.scale))

    def ask(
        self, system: str, user: str, tokens: int, shots: tuple[tuple[str, str], ...] = (), **request: Any
    ) -> str:
        """One LLM request (greedy by default); returns the text and records it in the transcript.

        ``shots`` are (user, assistant) example turns: small models follow a format they have seen
        far more reliably than one they are told about.
        """
        n = self.budget(tokens)
        messages = [{"role": "system", "content": system}]
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": user})
        request.setdefault("temperature", 0.0)
        request.setdefault("priority", self.priority)
        res: ChatResult = self.chat(messages, max_new_tokens=n, expected_tokens=n, **request)
        self.transcript.append({"prompt": user, "text": res.text, "tokens": res.response.completion_tokens})
        return res.text.strip()

    def task_or_default(self, task: Any) -> str:
        return str(task).strip() if task else self.default_task
