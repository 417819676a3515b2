"""``aios sched optimize``: flags, budget parsing, the --deploy refusal, and a full run with doubles.

The full run swaps the kernel's LLM for the recorded-response double and the VM toolchain for the
``FakeBackend`` of ``test_sched_agent.py`` (the real-VM path is in ``test_sched_agent_vm.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aios.agents.sched_agent.cli import parse_budget
from aios.cli import main


def test_parse_budget():
    assert parse_budget("5") == {"iterations": 5}
    assert parse_budget("iterations=6,time=20m,tokens=5000") == {
        "iterations": 6,
        "time_s": 1200.0,
        "tokens": 5000,
    }
    assert parse_budget("time=90") == {"time_s": 90.0}
    with pytest.raises(ValueError):
        parse_budget("speed=3")
    with pytest.raises(ValueError):
        parse_budget("time=soon")


def test_refusals_are_one_line(capsys, monkeypatch):
    import aios.sched_ext.tools as tools

    monkeypatch.setattr(tools, "host_deploy_problem", lambda: "host deployment needs root")
    assert main(["sched", "optimize", "--workload", "batch", "--deploy"]) == 2
    assert "--deploy refused: host deployment needs root" in capsys.readouterr().err
    assert main(["sched", "optimize", "--workload", "no-such-workload"]) == 2
    assert "unknown workload" in capsys.readouterr().err
    assert main(["sched", "optimize", "--workload", "batch", "--budget", "speed=1"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_optimize_end_to_end_with_doubles(tmp_path, monkeypatch, capsys):
    from test_sched_agent import FakeBackend, RecordedLLM

    import aios.kernel.kernel as kernel_mod
    import aios.sched_ext.tools as tools

    real_kernel = kernel_mod.Kernel

    def kernel_with_double(**kw):
        return real_kernel(
            kernel_mod.KernelConfig(model="tiny", embedder="hash", data_dir=tmp_path / "data"),
            llm=RecordedLLM(),
        )

    monkeypatch.setattr(kernel_mod, "Kernel", kernel_with_double)
    monkeypatch.setattr(
        tools,
        "ToolchainBackend",
        lambda: FakeBackend(tmp_path / "repo", gain=lambda s: 0.3 if "longest" in s else -0.1),
    )
    out = tmp_path / "report.json"
    rc = main(
        [
            "sched",
            "optimize",
            "--workload",
            "batch",
            "--goal",
            "lower mean completion time",
            "--budget",
            "iterations=3",
            "--reps",
            "2",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "plan: goal = minimize mean completion time" in text
    assert "iter 1:" in text and "candidate" in text and "winner:" in text and "cost:" in text
    assert "verification runs" in text and "LLM tokens" in text
    report = json.loads(Path(out).read_text())
    # round 1 screens the 6 closest repository schedulers together; rounds 2 and 3 one candidate each
    origins = [it["origin"] for it in report["iterations"]]
    assert report["workload"] == "batch" and origins.count("repository") == 6 and len(origins) == 8
    if report["accepted"]:
        assert "longest" in report["winner_source"] and report["improvement"] == pytest.approx(0.3)
