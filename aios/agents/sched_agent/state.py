"""The sched-agent's working state: the candidates of a run and what it has learned from them.

Why apart from the agent: the loop's roles (observe, plan, execute, learn) all read and write this
state; keeping it in plain dataclasses, one per run, lets several runs share one agent object and
one kernel without sharing anything mutable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aios.agents.sched_agent.report import Cost, IterationRecord
from aios.agents.sched_agent.source import source_tunables
from aios.agents.sched_agent.task import OptimizeTask
from aios.sched_ext.compose import SLICE_CHOICES_US, Composition


@dataclass
class Candidate:
    """A scheduler the loop will verify and measure, and where it came from."""

    name: str
    origin: Literal["repository", "tuned", "compose", "write"]
    source: str
    detail: str = ""
    composition: Composition | None = None
    tunables: dict[str, int] = field(default_factory=dict)
    base: str = ""  # the repository scheduler it derives from


@dataclass
class LoopState:
    """Everything one run has learned so far (one per run: the agent itself keeps no state)."""

    task: OptimizeTask
    goal: str = ""
    metric: str = ""
    higher: bool = False
    profile: dict[str, Any] = field(default_factory=dict)
    hits: list[dict[str, Any]] = field(default_factory=list)
    records: list[IterationRecord] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)
    best: IterationRecord | None = None
    cost: Cost = field(default_factory=Cost)
    started: float = field(default_factory=time.time)
    feedback: list[str] = field(default_factory=list)
    blocks: dict[str, dict[str, str]] = field(default_factory=dict)  # candidate -> its building blocks
    rounds: int = 0
    stale_rounds: int = 0  # rounds in a row that found nothing better than ``best``


def blocks_of(st: LoopState, cand: Candidate) -> dict[str, str]:
    """A candidate's building blocks: its composition, or the blocks its repository entry declares."""
    if cand.composition is not None:
        return {k: str(v) for k, v in cand.composition.model_dump(mode="json").items()}
    base = cand.base or cand.name.split("+", 1)[0]
    hit = next((h for h in st.hits if h.get("name") == base), None)
    blocks = {k: str(v) for k, v in ((hit or {}).get("blocks") or {}).items()}
    if not blocks and base in st.blocks:
        blocks = dict(st.blocks[base])
    slice_ns = source_tunables(cand.source).get("slice_ns")
    if slice_ns:
        blocks["slice_us"] = str(min(SLICE_CHOICES_US, key=lambda us: abs(us * 1000 - slice_ns)))
    return blocks


def composition_matches(c: Composition, chosen: dict[str, str]) -> bool:
    """Whether ``c`` has every building block chosen so far."""
    d = c.model_dump(mode="json")
    return all(str(d[k]) == v for k, v in chosen.items())
