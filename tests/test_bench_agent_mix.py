"""The agent-serving benchmark's mixes and their simulation: what the mix definitions promise.

No model runs here (the benchmark itself takes minutes on SmolLM2); these tests check the
heavy-tailed mix against the rules its docstring states, and that the simulator's
one-after-another mode really runs one agent at a time.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import _common and each other
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bounded_pareto_strata_keep_the_mean_and_rise():
    bench = load("bench_agent_serving")
    for n, alpha, high, mean in ((8, 1.3, 256, 10.25), (12, 1.1, 1024, 61.0), (4, 1.9, 64, 8.0)):
        strata = bench.bounded_pareto_strata(n, alpha, high, mean)
        assert abs(statistics.mean(strata) - mean) < 1e-6 * mean
        assert all(a < b for a, b in zip(strata, strata[1:], strict=False))
        assert strata[-1] <= high


def test_heavy_mix_follows_its_stated_rules():
    bench = load("bench_agent_serving")
    heavy, light = bench.MIXES["heavy"], bench.MIXES["light"]
    assert heavy == bench.heavy_mix()  # deterministic: the seed is fixed
    assert len(heavy) == len(light) == 8
    docs, calls, replies = zip(*heavy, strict=True)
    assert sorted(calls) == [2, 2, 3, 4, 4, 5, 6, 6]  # the strata of uniform 2..6
    assert max(replies) <= 256 and max(docs) <= 1024
    # same mean work per call as the light mix (up to rounding each stratum to whole tokens)
    assert abs(statistics.mean(replies) - statistics.mean(r for _, _, r in light)) <= 0.5
    assert abs(statistics.mean(docs) - statistics.mean(d for d, _, _ in light)) <= 0.5
    # heavy-tailed: the top stratum far above the median, unlike the light mix's spread
    assert max(replies) >= 6 * statistics.median(replies)
    assert max(r for _, _, r in light) <= 3 * statistics.median(r for _, _, r in light)


def test_simulated_one_after_another_runs_each_agent_alone():
    sim = load("sim_agent_mix")
    from aios.kernel.scheduler import make_policy

    mix = sim.MIXES["heavy"]
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    seq = sim.simulate(mix, make_policy("fifo"), True, order, sequential=True)
    alone = [sim.simulate([mix[i]], make_policy("fifo"), True, [0])["makespan"] for i in order]
    assert seq["preemptions"] == 0
    # each agent starts when the previous one is done (all arrive within 1.4 s, before the first is done)
    assert abs(seq["makespan"] - sum(alone)) < 1e-6
    together = sim.simulate(mix, make_policy("fifo"), True, order)
    assert together["makespan"] < seq["makespan"]  # two rows at once finish sooner
