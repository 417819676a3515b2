"""Workload analysis engine in the micro-VM: the cheap summary tier sees the batch's shape, and its BPF
collector counts every task of the run, including those too short-lived for 0.2 s sampling."""

from __future__ import annotations

import pytest


@pytest.mark.vm
@pytest.mark.slow
def test_profile_summary_of_batch():
    from aios.sched_ext.profile import profile

    p = profile("batch", tier="summary")
    assert p.cpus == 2 and p.tier == "summary"
    assert p.duration_s > 0 and p.context_switches > 0 and p.processes_created >= 30
    assert p.tasks_seen >= 1 and p.runtime_ms.max > 0
    assert p.workload_metrics.get("mean_completion_ms", 0) > 0  # the workload's own output came back
    text = p.to_text()
    assert "2 CPUs" in text and "batch" not in text  # name-free: observations only
    # the collector saw every job exit (40 forked by the workload), whatever the sampler caught
    lt = p.lifetimes
    assert lt is not None, "the BPF collector did not report"
    assert lt.exits >= 40 and lt.forks >= 40, lt
    assert lt.exits >= p.tasks_seen - 1, (lt.exits, p.tasks_seen)
    assert lt.switches > 0 and lt.lifetime_ms.count == lt.exits and lt.max_lifetime_ms > 0


def test_collector_counters_and_script():
    """No VM: the .bss counters become a TaskLifetimes, and the script starts the workload stopped."""
    from aios.sched_ext.profile import TaskLifetimes, guest_script
    from aios.sched_ext.workloads import get_workload

    c = {"nr_forks": 5, "nr_execs": 5, "nr_exits": 4, "nr_short": 3, "nr_switches": 50, "nr_wakeups": 20,
         "nr_vol_switches": 30, "nr_invol_switches": 10, "max_lifetime_us": 250000,
         "lifetime_hist": [0] * 10 + [3] + [0] * 6 + [1] + [0] * 14, "runtime_hist": [4] + [0] * 31}
    lt = TaskLifetimes.from_counters(c)
    assert (lt.exits, lt.short_lived, lt.forks) == (4, 3, 5)
    assert lt.voluntary_fraction == 0.75 and lt.max_lifetime_ms == 250.0
    assert lt.lifetime_ms.count == 4 and lt.lifetime_ms.p50 < 10.0 < lt.lifetime_ms.max   # 3 under 10 ms, 1 long
    s = guest_script(get_workload("batch"), "summary", collector=True)
    assert "kill -STOP $$" in s and "autoattach" in s and "kill -CONT $WLPID" in s
    assert "autoattach" not in guest_script(get_workload("batch"), "summary", collector=False)
