"""What the sched-agent reports: each candidate's journey, the winner, and what the run cost.

Why a model and not a dict: the report is stored, written to JSON by the CLI and read back by the
benchmark and the tests, so its shape is checked on every side.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Verdict(BaseModel):
    ok: bool
    stage: str = ""
    reason: str = ""


class IterationRecord(BaseModel):
    """One candidate's journey: where it came from, the verifier's verdict, its measurement."""

    index: int
    name: str
    origin: Literal["repository", "tuned", "compose", "write"]
    detail: str = ""
    verdict: Verdict
    metric: str = ""
    baseline: float | None = None
    candidate: float | None = None
    improvement: float | None = Field(None, description="relative gain over EEVDF (0.2 = 20% better)")
    spread: float | None = Field(None, description="relative spread of the ratio over repetitions")
    ratios: list[float] = Field(
        default_factory=list, description="per-repetition ratio vs EEVDF (same boot, >1 = better)"
    )
    seconds: float = 0.0
    digest: str = ""


class Cost(BaseModel):
    wall_s: float = 0.0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    verify_runs: int = 0
    measure_runs: int = 0
    usd: float = Field(0.0, description="$0 with local models")


class OptimizeReport(BaseModel):
    workload: str
    goal: str
    metric: str
    higher_is_better: bool
    mode: str
    iterations: list[IterationRecord] = Field(default_factory=list)
    winner: str = "EEVDF"
    winner_source: str | None = None
    improvement: float = 0.0
    spread: float | None = None
    accepted: bool = False
    stress: dict[str, Any] | None = None
    confirmation: list[IterationRecord] = Field(
        default_factory=list, description="the best candidates re-measured together in one boot"
    )
    stress_failures: list[dict[str, Any]] = Field(
        default_factory=list,
        description="candidates that won on the metric but failed the stress run, and why",
    )
    stop_reason: str = ""
    deployed: dict[str, Any] | None = None
    cost: Cost = Field(default_factory=Cost)

    def table(self) -> str:
        """Per-iteration progress as a plain text table."""
        rows = [f"{'#':>2}  {'candidate':<32} {'origin':<10} {'verdict':<22} {self.metric + ' vs EEVDF':>26}"]
        for it in self.iterations:
            verdict = "ok" if it.verdict.ok else f"rejected@{it.verdict.stage}"
            if it.improvement is None:
                vs = "-"
            else:
                vs = f"{it.candidate:.4g} vs {it.baseline:.4g} ({it.improvement:+.1%})"
            rows.append(f"{it.index:>2}  {it.name[:32]:<32} {it.origin:<10} {verdict[:22]:<22} {vs:>26}")
        if self.confirmation:
            rows.append("confirmation (the best candidates measured again, together, in one boot):")
            for it in self.confirmation:
                vs = "-" if it.improvement is None else f"{it.improvement:+.1%}"
                rows.append(f"{it.index:>2}  {it.name[:32]:<32} {it.origin:<10} {'':<22} {vs:>26}")
        return "\n".join(rows)
