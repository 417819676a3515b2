"""Policy repository: seeding, SQL queries by measured performance, semantic search.

Plumbing tests use the hashing embedder (instant); one test checks retrieval quality with the
real offline MiniLM model, since "a latency-sensitive server" must find the interactive scheduler
by meaning, not by shared words.
"""

from __future__ import annotations

import os

import pytest

from aios.kernel.embedding import HashEmbedder
from aios.sched_ext.measure import MeasureResult, MetricComparison, Stats
from aios.sched_ext.repository import PolicyEntry, PolicyRepository, ResultRecord, load_seed_entries

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _result(sched: str, wl: str, base: float, cand: float) -> MeasureResult:
    m = MetricComparison(name="mean_completion_ms", unit="ms", better="lower", baseline=Stats.of([base]),
                         candidate=Stats.of([cand]), ratio=cand / base, improvement=base / cand,
                         paired_improvement=Stats.of([base / cand]))
    return MeasureResult(scheduler=sched, workload=wl, goal="min_mean_completion",
                         primary_metric="mean_completion_ms", reps=1, metrics={m.name: m},
                         improvement=base / cand, stayed_enabled=True, date="2026-11-21T00:00:00+00:00")


def test_seed_entries_documented():
    seeds = load_seed_entries()
    names = {e.name for e in seeds}
    assert {"fifo", "vtime_fair", "sjf", "ljf", "interactive", "locality"} <= names
    for e in seeds:
        assert len(e.description) > 60 and e.tags and e.goal
        assert e.tunables, e.name
        for t in e.tunables:  # every documented tunable is a .rodata global in the source
            assert "const volatile" in e.source and t in e.source, (e.name, t)


def test_seed_add_get_results_best(tmp_path):
    repo = PolicyRepository(tmp_path / "r", embedder=HashEmbedder(dim=64))
    assert len(repo) >= 6
    assert repo.get("ljf").ops_name == "aios_ljf"
    repo.record_result(_result("ljf", "batch", 400.0, 250.0))
    repo.record_result(_result("fifo", "batch", 400.0, 300.0))
    repo.record_result(_result("sjf", "batch", 400.0, 500.0))
    repo.record_result(ResultRecord(scheduler="fifo", workload="batch", primary_metric="mean_completion_ms",
                                    improvement=9.0, stayed_enabled=False))  # ejected: must not count
    best = repo.best_for("batch")
    assert [b.name for b in best] == ["ljf", "fifo", "sjf"]
    assert best[0].improvement == pytest.approx(1.6)
    assert repo.best_for("batch", metric="mean_completion_ms")[0].name == "ljf"
    assert len(repo.results(scheduler="fifo")) == 2
    repo.add(PolicyEntry(name="mine", description="a custom round robin policy", source="/* x */",
                         tags=["custom"], origin="agent"))
    assert repo.list(tag="custom")[0].name == "mine"
    hits = repo.search("custom round robin policy", k=3)
    assert hits and hits[0].name == "mine"
    repo.close()
    # reopening keeps everything and does not re-seed
    repo2 = PolicyRepository(tmp_path / "r", embedder=HashEmbedder(dim=64))
    assert len(repo2) == len(load_seed_entries()) + 1
    assert repo2.best_for("batch")[0].name == "ljf"


@pytest.mark.slow
def test_semantic_search_minilm(tmp_path):
    repo = PolicyRepository(tmp_path / "r")  # offline MiniLM
    top = [h.name for h in repo.search("web server requests must respond quickly while batch jobs hog the CPU", k=2)]
    assert "interactive" in top
    top = [h.name for h in repo.search("many independent jobs, one of them very long; finish the jobs early on average", k=3)]
    assert {"ljf", "sjf", "fifo"} & set(top)
    top = [h.name for h in repo.search("keep threads on the same core to reuse warm caches", k=2)]
    assert "locality" in top
