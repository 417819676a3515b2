"""The goal vocabulary: what a user can ask the sched-agent to optimize, in one table.

Why one table: a goal has several names (the phrase the planner reasons with, the short label a
small model answers with, the workload registry's label, the words by which a user names it
outright) and a way to be measured (metric-name fragments, a default metric and its direction).
Kept as one record per goal, a new goal is one row, and no two lists can disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    """One optimization goal and every name it goes by."""

    phrase: str  # what the planner reasons with and reports ("minimize makespan")
    label: str  # the short answer the model is constrained to ("makespan")
    registry: str  # the workload registry's ``Goal`` label ("min_makespan")
    fragments: tuple[str, ...]  # metric-name fragments that serve it, in preference order
    default_metric: str  # the metric when the workload is unknown
    higher_is_better: bool  # direction of ``default_metric``
    words: tuple[str, ...]  # words by which a user names it outright


#: Every goal, in the order a user's words are matched against them: latency first, because its
#: words ("latency") are the most specific a request can contain.
GOAL_TABLE: tuple[Goal, ...] = (
    Goal(
        phrase="minimize p99 wake-up latency",
        label="p99 latency",
        registry="min_p99_latency",
        fragments=("p99",),
        default_metric="p99_wakeup_us",
        higher_is_better=False,
        words=("p99", "tail latency", "wake-up latency", "wakeup latency", "latency"),
    ),
    Goal(
        phrase="minimize makespan",
        label="makespan",
        registry="min_makespan",
        fragments=("makespan", "time_s", "elapsed"),
        default_metric="makespan_ms",
        higher_is_better=False,
        words=("makespan", "last job", "whole batch", "all jobs finish", "all of them finish"),
    ),
    Goal(
        phrase="minimize mean completion time",
        label="mean completion time",
        registry="min_mean_completion",
        fragments=("mean_completion", "mean_step", "avg"),
        default_metric="mean_completion_ms",
        higher_is_better=False,
        words=("mean completion", "average completion", "average job", "mean job", "each job finish"),
    ),
    Goal(
        phrase="maximize throughput",
        label="throughput",
        registry="max_throughput",
        fragments=("per_s", "ops_per_s", "time_s"),
        default_metric="tasks_per_s",
        higher_is_better=True,
        words=("throughput", "per second", "requests/s", "ops/s"),
    ),
)

#: The order the model is offered the labels in (a recorded test double answers the first; the
#: last-resort answer is makespan).
_CHOICE_ORDER = ("makespan", "mean completion time", "throughput", "p99 latency")

#: The goals the planner chooses from (the words constrained decoding may produce), mapped to the
#: workload registry's ``Goal`` labels.
GOALS: dict[str, str] = {g.phrase: g.registry for g in GOAL_TABLE}
GOAL_PHRASE: dict[str, str] = {g.registry: g.phrase for g in GOAL_TABLE}
#: Short labels the model answers with (distinct first tokens), mapped to ``GOALS`` phrases.
GOAL_LABELS: dict[str, str] = {
    label: next(g.phrase for g in GOAL_TABLE if g.label == label) for label in _CHOICE_ORDER
}


def goal_of(name: str) -> Goal:
    """The goal named by its phrase, registry label or short label (KeyError if none)."""
    for g in GOAL_TABLE:
        if name in (g.phrase, g.registry, g.label):
            return g
    raise KeyError(name)


def registry_workload(name: str) -> Any | None:
    """The workload registry's entry for ``name`` (None for a workload the registry does not know)."""
    from aios.sched_ext.workloads import WORKLOADS

    return WORKLOADS.get(name)


def goal_metric(goal: str, workload: Any | None) -> tuple[str, bool]:
    """The metric a goal is judged by on ``workload`` (a registry ``Workload``) and whether higher is better.

    The workload's own primary metric when the goal is its labelled one; otherwise the first of
    its metrics that serves the goal; its primary metric as the last resort.
    """
    g = goal_of(goal)
    if workload is None:
        return g.default_metric, g.higher_is_better
    if str(workload.goal) == g.registry:
        return workload.primary_metric, workload.primary.better == "higher"
    for frag in g.fragments:
        for m in workload.metrics:
            if frag in m.name:
                return m.name, m.better == "higher"
    return workload.primary_metric, workload.primary.better == "higher"


def explicit_goal(user_goal: str | None) -> str | None:
    """The goal the user named outright (``--goal "lower p99 latency"``), else None."""
    low = (user_goal or "").lower()
    for g in GOAL_TABLE:
        if any(w in low for w in g.words):
            return g.phrase
    return None


def profile_text(profile: dict[str, Any], limit: int = 900) -> str:
    """A profile as the short text a prompt shows: its own rendering, else its summary as JSON."""
    text = profile.get("text") or json.dumps(profile.get("summary", profile), sort_keys=True, default=str)
    return text[:limit]
