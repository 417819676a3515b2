"""Seed schedulers: documented, compile, pass every verifier stage; measure gives sane ratios."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

SEEDS = Path(__file__).resolve().parents[2] / "aios" / "sched_ext" / "schedulers"
REQUIRED = {"fifo", "vtime_fair", "sjf", "ljf", "interactive", "locality"}


def _seeds() -> list[Path]:
    return sorted(SEEDS.glob("*.bpf.c"))


def test_seeds_documented_with_sidecars():
    names = {p.name.removesuffix(".bpf.c") for p in _seeds()}
    assert REQUIRED <= names
    for src in _seeds():
        text = src.read_text()
        meta = json.loads(src.with_name(src.name.removesuffix(".bpf.c") + ".json").read_text())
        assert text.lstrip().startswith("/*") and "Policy:" in text and "Tunables" in text, src.name
        assert meta["description"] and meta["tags"] and meta["goal"], src.name
        for name, t in meta["tunables"].items():
            assert re.search(rf"const volatile \w+ {name} = ", text), (src.name, name)
            assert t["min"] <= t["default"] <= t["max"], (src.name, name)
        assert f'.name = "{meta["name"]}"' in text
        assert "timeout_ms" in text
        # general policies: nothing keyed on process names
        assert "comm" not in re.sub(r"/\*.*?\*/", "", text, flags=re.S), src.name


def test_seeds_compile_and_pass_static_checks():
    from aios.sched_ext.verifier import verify_many

    results = verify_many(_seeds(), stop_after="static")
    assert [r.source for r in results] == [p.resolve() for p in _seeds()]
    for r in results:
        assert [v.stage for v in r.stages if not v.skipped] == ["compile", "static"], r.report()
        assert all(v.ok for v in r.stages if not v.skipped), r.report()


@pytest.fixture(scope="module")
def seed_verdicts():
    """Every seed through all four stages, in two concurrent boots (one TCG guest per host core)."""
    from aios.sched_ext.verifier import verify_many

    return {p.name: r for p, r in zip(_seeds(), verify_many(_seeds(), boots=2), strict=True)}


@pytest.mark.vm
@pytest.mark.slow
def test_seeds_pass_all_verifier_stages(seed_verdicts):
    assert len(seed_verdicts) == len(_seeds())
    for r in seed_verdicts.values():
        assert r.ok, r.report()
        assert [v.stage for v in r.stages] == ["compile", "static", "kernel_verifier", "dynamic"], r.report()


@pytest.mark.vm
@pytest.mark.slow
def test_measure_batch_gives_sane_ratios(seed_verdicts):
    from aios.sched_ext.measure import measure

    # ljf's verdict from the seeds' verification boot (measure refuses anything without a passing one)
    res = measure(SEEDS / "ljf.bpf.c", "batch", reps=2, progress=False, verdict=seed_verdicts["ljf.bpf.c"])
    assert res.stayed_enabled and res.reps == 2
    m = res.metrics["mean_completion_ms"]
    assert len(m.baseline.values) == 2 and len(m.candidate.values) == 2
    # identities of the measurement, not how fast TCG happened to run: every rep completed work,
    # and the ratio of means lies between the per-rep ratios (it is their weighted average)
    assert min(m.baseline.values) > 0 and min(m.candidate.values) > 0
    assert math.isclose(m.ratio, m.candidate.mean / m.baseline.mean)
    assert math.isclose(res.improvement, m.baseline.mean / m.candidate.mean)
    eps = 1e-9 * res.improvement
    assert m.paired_improvement.min - eps <= res.improvement <= m.paired_improvement.max + eps
    assert "makespan_ms" in res.metrics and res.kernel
