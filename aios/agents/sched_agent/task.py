"""What a user asks the sched-agent for: the workload, their words, the mode and the budget.

Why pydantic: the task is the agent's edge (the CLI, the benchmark and other agents build one), so
bad input is refused with a clear error before any boot.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Budget(BaseModel):
    """When the agent must stop: candidates evaluated, wall time, LLM tokens."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(5, ge=1, le=100, description="rounds; the opening screen of seeds is one")
    time_s: float = Field(3600.0, gt=0)
    tokens: int = Field(100_000, ge=1)


class OptimizeTask(BaseModel):
    """What the user asks the sched-agent for (the CLI builds one from its flags)."""

    model_config = ConfigDict(extra="forbid")

    workload: str = Field(min_length=1)
    goal: str | None = Field(None, description="the user's words; the goal is still inferred from them")
    mode: Literal["compose", "write"] = "compose"
    budget: Budget = Field(default_factory=Budget)
    reps: int = Field(3, ge=1, le=20, description="repetitions per measurement (EEVDF and candidate)")
    stress_s: float = Field(60.0, ge=0, description="stress run of the final candidate before acceptance")
    min_gain: float = Field(
        0.03, ge=0, description="gain over EEVDF a candidate must exceed at its 90% lower bound"
    )
    patience: int = Field(2, ge=1, description="stop after this many rounds without a better candidate")
    confirm_reps: int = Field(5, ge=2, le=20, description="repetitions of the confirmation boot")
    confirm: int = Field(
        3,
        ge=0,
        le=10,
        description="best candidates re-measured together before acceptance (0: take the loop's best as measured)",
    )
    seeds: int = Field(
        6,
        ge=0,
        le=20,
        description="repository schedulers screened together in the first round (two VM boots in all)",
    )
    deploy: bool = False
    profile_tier: str = "summary"
    deep_profile: bool = Field(
        True, description="after planning, take the deeper 'trace' tier when the goal is wake-up latency"
    )
