"""Workload analysis engine in the micro-VM: the cheap summary tier sees the batch's shape."""

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
