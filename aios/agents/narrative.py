"""Narrative agent: writes a short story in three LLM requests (outline, story, title).

Splitting the work the way the paper's narrative agent does gives the scheduler several short
requests per agent instead of one long one, and each later request depends on the earlier text.
"""

from __future__ import annotations

from typing import Any

from aios.agents._common import first_line
from aios.agents.base import ExampleAgent

SYSTEM = "You are a creative writer who writes short, vivid prose."


class NarrativeAgent(ExampleAgent):
    description = "writes a short story in 2-3 LLM calls: an outline, the story, a title"
    default_task = "a lighthouse keeper who finds a message in a bottle"

    def run(self, task: Any = None) -> dict[str, Any]:
        topic = self.task_or_default(task)
        outline = self.ask(
            SYSTEM, f"Give a three-point outline for a very short story about {topic}.", tokens=48
        )
        story = self.ask(
            SYSTEM,
            f"Write a story of about five sentences about {topic}, following this outline:\n{outline[:600]}",
            tokens=96,
        )
        title = first_line(
            self.ask(SYSTEM, f"Give a title of at most six words for this story:\n{story[:600]}", tokens=12),
            limit=80,
        ).strip("\"'*# ")
        title = title or topic.capitalize()
        return {"title": title, "outline": outline, "story": story, "summary": f"{title}: {story[:60]}"}
