"""Recommendation agent: restaurant picks from preferences kept in memory and storage.

Run flow: the new request is remembered (memory manager: short-term, freed when the run ends)
and appended to the user's profile in storage (durable), so preferences accumulate across runs
of the same agent on the same kernel. The model
(1) turns request plus recalled preferences into keywords, the agent scores the local restaurant
data set on them (deterministic: the model cannot invent a restaurant), and the model (2) writes
the recommendation for the top candidates.
"""

from __future__ import annotations

from typing import Any

from aios.agents._common import Services, keywords, load_data
from aios.agents.base import ExampleAgent

SYSTEM = "You are a friendly local food guide. Be brief."


def score(restaurant: dict[str, Any], words: set[str], budget: float | None) -> float:
    tags = set(restaurant["tags"]) | {restaurant["cuisine"]} | set(restaurant["area"].split())
    s = float(len(tags & words))
    if budget is not None and restaurant["price"] > budget:
        s -= 2.0
    return s


def parse_budget(text: str) -> float | None:
    import re

    m = re.search(r"(?:under|below|less than|max(?:imum)?|budget(?: of)?)\s*\$?\s*(\d+)", text.lower())
    return float(m.group(1)) if m else None


class RecommendationAgent(ExampleAgent):
    description = "recommends restaurants from preferences kept in memory and storage (local data set)"
    default_task = (
        "I love spicy food and vegetarian dishes, my budget is under 20 dollars, and I live in riverside."
    )

    def run(self, task: Any = None) -> dict[str, Any]:
        request = self.task_or_default(task)
        svc = Services()
        # short-term memory (this run's session) and the durable profile from earlier runs
        past = [p.removeprefix("preference: ") for p in svc.recall(request, k=3)]
        stored = svc.load("profile")
        if stored:
            past = [*stored.split(" | "), *past]
        svc.remember(f"preference: {request}")
        profile = " | ".join(dict.fromkeys([*past, request]))
        svc.store("profile", profile[-2000:])

        extracted = self.ask(
            SYSTEM,
            f"User preferences: {profile[-600:]}\nList the food preferences as comma-separated keywords.",
            tokens=24,
        )
        words = set(keywords(extracted)) | set(keywords(profile))
        budget = parse_budget(profile)
        ranked = sorted(
            load_data("restaurants.json")["restaurants"], key=lambda r: (-score(r, words, budget), r["name"])
        )
        top = ranked[:3]
        listing = "\n".join(f"- {r['name']}: {r['cuisine']}, {r['area']}, about ${r['price']}" for r in top)
        text = self.ask(
            SYSTEM,
            f"User preferences: {request}\nCandidates:\n{listing}\nRecommend the best one in two sentences.",
            tokens=64,
        )
        svc.store("last_recommendation", f"{top[0]['name']}: {text}")
        return {
            "keywords": sorted(words & {t for r in top for t in r["tags"]}),
            "candidates": [r["name"] for r in top],
            "recommendation": text,
            "summary": f"top pick: {top[0]['name']}",
            "memory": svc.used.get("memory"),
            "storage": svc.used.get("storage"),
        }
