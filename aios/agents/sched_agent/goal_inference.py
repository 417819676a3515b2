"""Goal inference: the user's words (and the observed profile) -> one goal of ``GOALS``.

Why retrieval-chosen examples: a small model follows worked examples far better than
instructions, and it follows the *closest* examples best. The worked examples ship as data
(``aios/agents/data/sched_goal_examples.json``, six per goal, each from another domain than the
evaluation workloads); the planner stores them in the calling agent's storage and retrieves the few
nearest to the request through storage syscalls, and a goal the user named outright becomes a new
example for the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aios.agents._common import load_data
from aios.agents.sched_agent.goals import (
    GOAL_LABELS,
    explicit_goal,
    profile_text,
    registry_workload,
)
from aios.sched_ext.tools import digest
from aios.sdk.calls import storage_list, storage_put, storage_search

#: Worked examples for the goal prompt as (workload text, goal label) pairs, in the data file's
#: order (grouped by goal: makespan, mean completion time, throughput, p99 latency; six each).
GOAL_EXAMPLES: tuple[tuple[str, str], ...] = tuple(
    (e["text"], e["goal"]) for e in load_data("sched_goal_examples.json")["examples"]
)
#: Storage keys of the worked examples (the seeds, then goals users named outright).
GOAL_EXAMPLE_PREFIX = "goal-examples/"
#: What the goal prompt asks, as its system message.
GOAL_INSTRUCTION = "For each workload, name what its user waits for: makespan, mean completion time, throughput or p99 latency."


def goal_examples(request: str, k: int = 4) -> list[tuple[str, str]]:
    """The ``k`` worked examples closest in meaning to ``request``, most similar last.

    Retrieval-chosen few-shot prompting, through storage syscalls: the examples live in the calling
    agent's storage (seeded with ``GOAL_EXAMPLES`` on first use, then grown by
    ``remember_goal_example``), and the vector DB picks the nearest. Most similar last because a
    small model leans towards the example it read most recently.
    """
    have = {i["key"] for i in storage_list(GOAL_EXAMPLE_PREFIX, limit=10_000)}
    for i, (text, label) in enumerate(GOAL_EXAMPLES):
        key = f"{GOAL_EXAMPLE_PREFIX}seed-{i:02d}"
        if key not in have:
            storage_put(key, text, {"goal": label, "source": "seed"})
    hits = storage_search(request, k=k, prefix=GOAL_EXAMPLE_PREFIX)
    return [
        (h["content"], h["metadata"]["goal"])
        for h in reversed(hits)
        if h["metadata"].get("goal") in GOAL_LABELS
    ]


def remember_goal_example(request: str, goal: str) -> None:
    """Keep a request whose goal the user named outright as a worked example for later inference."""
    label = next((lbl for lbl, phrase in GOAL_LABELS.items() if phrase == goal), None)
    if label is None or not request.strip():
        return
    key = f"{GOAL_EXAMPLE_PREFIX}user-{digest(request)}"
    storage_put(key, request, {"goal": label, "source": "user"})


def goal_messages(
    request: str, profile: str = "", examples: list[tuple[str, str]] | None = None
) -> list[dict[str, str]]:
    """The few-shot goal prompt as a chat: each worked example is a user turn (the workload) and an
    assistant turn (its goal), then the user's request with the observed profile.

    A chat model was tuned on turns, so it copies an answer pattern from earlier assistant turns
    more faithfully than from a transcript pasted into one message. Without ``examples``: one
    example per goal (showing all of them drowns a small model: measured 0/8 with SmolLM2).
    """
    msgs = [{"role": "system", "content": GOAL_INSTRUCTION}]
    for text, label in examples if examples is not None else GOAL_EXAMPLES[::6]:
        msgs += [{"role": "user", "content": f"Workload: {text}"}, {"role": "assistant", "content": label}]
    observed = f" Observed: {profile}" if profile else ""
    msgs.append({"role": "user", "content": f"Workload: {request}{observed}"})
    return msgs


def infer_goal(
    ask: Callable[[list[dict[str, str]], list[str]], str],
    workload: str,
    user_goal: str | None,
    profile: dict[str, Any],
    examples: Callable[[str], list[tuple[str, str]]] | None = None,
) -> str:
    """One goal of ``GOALS`` from the user's words and the profile.

    A goal the user named outright is taken as said.  Otherwise the model is asked —
    ``ask(messages, choices)`` is an LLM call constrained to ``choices``, so the answer is always a
    valid label; an unconstrained model's free text is mapped to the first label it mentions.
    ``examples(request)`` picks the worked examples for the prompt (``goal_examples`` retrieves
    the nearest from storage); without it the prompt shows one example per goal.
    """
    named = explicit_goal(user_goal)
    if named is not None:
        return named
    wl = registry_workload(workload)
    request = user_goal or profile.get("description") or (wl.description if wl is not None else workload)
    shape = profile_text(profile, 240) if profile.get("text") else ""
    shots = examples(request) if examples is not None else None
    answer = ask(goal_messages(request, shape, shots), list(GOAL_LABELS)).strip()
    if answer in GOAL_LABELS:
        return GOAL_LABELS[answer]
    low = answer.lower()
    for label, goal in GOAL_LABELS.items():
        if label in low or goal in low:
            return goal
    return GOAL_LABELS["makespan"]
