"""An agent *process* for the service tests: one ``aios.Agent`` run unchanged against ``aios serve``.

    python tests/_service_agent.py URL_OR_SOCKET TOKEN TASK   -> one line of JSON: the AgentRun

``Probe`` is imported by the tests too, which run the very same class in process to compare.
"""

from __future__ import annotations

import json
import sys

import aios


class Probe(aios.Agent):
    """Touches every kind of syscall the SDK has: chat (plain and streamed), memory, storage, tools."""

    def run(self, task: str) -> dict:
        answer = self.chat(task, max_new_tokens=16)
        self.memory_add(f"said: {answer.text}")
        self.storage_put("answer", answer.text)
        streamed = "".join(self.chat_stream(task + " again", max_new_tokens=12))
        return {
            "answer": answer.text,
            "stored": self.storage_get("answer")["content"],
            "tool": self.tool_call("calculator", {"expression": "6*7"})["result"],
            "streamed": streamed,
            "again": self.chat(task + " again", max_new_tokens=12).text,
            "memory": [m["content"] for m in self.memory_search("said", k=1)],
            "tools": sorted(t["function"]["name"] for t in self.tools_list())[:3],
        }


if __name__ == "__main__":
    target, token, task = sys.argv[1:4]
    with aios.connect(target, token) as conn:
        run = conn.run(Probe(), task)
    print(json.dumps(run.model_dump(mode="json")))
