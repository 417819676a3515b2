"""The sched-agent with the real sched_ext toolchain in the micro-VM (slow: marked ``vm``).

- a representative sample of composed schedulers (every option of every building block appears
  at least once) passes all four verifier stages in one boot;
- the whole loop on the tiny-model kernel with the real toolchain (profile, repository search,
  staged verifier, EEVDF-vs-candidate measurement, stress run) on the ``batch`` workload, kept
  short (2 candidates, 1 repetition, a 3-repetition confirmation, 8 s of stress);
- safety through the records: every program loaded outside the verifier passed every stage.
"""

from __future__ import annotations

import pytest

from aios.sched_ext.compose import Composition, generate

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: Covers every ordering, dispatch, slice, wake-up boost and idle-selection option.
SAMPLE = [
    ("arrival", "global", 5000, "none", "kernel_default"),
    ("vtime", "per_cpu", 2000, "credit", "prev_cpu"),
    ("shortest_runtime", "global", 10000, "preempt", "any_idle"),
    ("longest_runtime", "per_cpu", 20000, "none", "any_idle"),
    ("priority", "global", 1000, "credit", "prev_cpu"),
    ("shortest_runtime", "per_cpu", 5000, "preempt", "kernel_default"),
]


def _setup_or_skip():
    from aios.sched_ext.setup import load_setup
    from aios.sched_ext.vm import MicroVM  # noqa: F401  (import check)

    info = load_setup()
    if info is None:
        pytest.skip("needs `aios sched setup` (guest kernel, initramfs)")
    return info


def test_sample_compositions_pass_the_full_verifier(tmp_path):
    from aios.sched_ext.verifier import verify_many

    _setup_or_skip()
    combos = [
        Composition(ordering=o, dispatch=d, slice_us=s, wakeup_boost=w, idle=i) for o, d, s, w, i in SAMPLE
    ]
    for field, values in Composition.model_fields.items():
        del values
        seen = {str(getattr(c, field)) for c in combos}
        assert len(seen) == {"ordering": 5, "dispatch": 2, "slice_us": 5, "wakeup_boost": 3, "idle": 3}[field]
    paths = []
    for c in combos:
        g = generate(c)
        p = tmp_path / g.filename
        p.write_text(g.source)
        paths.append(p)
    results = verify_many(paths, boots=2)  # two concurrent boots of three (TCG uses one host core each)
    assert [r.facts["vm"]["batch"] for r in results] == [3] * 6
    bad = [r.report() for r in results if not r.ok]
    assert not bad, "\n\n".join(bad)
    assert all(r.verdict("dynamic").ok for r in results)


def test_loop_with_real_toolchain_on_tiny_kernel(tiny_lm, tmp_path):
    from aios.agents.sched_agent import Budget, OptimizeReport, OptimizeTask, SchedAgent, confident_gain
    from aios.kernel.embedding import HashEmbedder
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig
    from aios.sched_ext.tools import SchedToolbox, ToolchainBackend, register_sched_tools

    _setup_or_skip()
    model, tok = tiny_lm
    cfg = KernelConfig(model="tiny", embedder="hash", data_dir=tmp_path / "data", max_batch_size=2)
    backend = ToolchainBackend(repository_path=tmp_path / "repo", embedder=HashEmbedder(64))
    box = SchedToolbox(backend=backend, workdir=tmp_path / "work")
    lines: list[str] = []
    with Kernel(cfg, llm=LLMEngine(model, tok, cfg)) as kernel:
        register_sched_tools(kernel, box)
        task = OptimizeTask(
            workload="batch",
            budget=Budget(iterations=2),
            reps=1,
            seeds=1,
            # the stress run still outlasts the 5 s watchdog it sets, so a stall is still ejected within it
            stress_s=8,
            # three repetitions still give the confidence bound a spread to go by
            confirm_reps=3,
            min_gain=0.0,
        )
        run = SchedAgent(progress=lines.append).start(kernel, task)
        assert run.ok, run.error
        tools_used = {s.request.name for s in kernel.history(agent="sched-agent", kind="tool")}
    report = OptimizeReport.model_validate(run.output)
    print("\n".join(lines))
    assert {
        "sched_profile",
        "sched_search",
        "sched_screen",
        "sched_verify",
        "sched_measure",
        "sched_record",
    } <= tools_used
    assert 1 <= len(report.iterations) <= 2 and report.iterations[0].origin == "repository"
    for it in report.iterations:
        if it.verdict.ok:
            assert it.baseline and it.candidate and it.improvement is not None
        else:
            assert it.verdict.reason  # every rejection has its reason recorded
    # never worse than EEVDF. Whether a candidate wins in a 1-rep TCG run is luck, so the test checks
    # the acceptance rule against the recorded measurements instead: an accepted winner was measured
    # ahead of EEVDF in its confirmation boot (same boot, its own repetitions) with a lower bound
    # above min_gain, and survived the stress run; a candidate measured behind EEVDF there is never
    # the winner, whichever way the run went.
    better = (lambda r: r.candidate > r.baseline) if report.higher_is_better else (lambda r: r.candidate < r.baseline)
    measured = report.confirmation or [it for it in report.iterations if it.improvement is not None]
    losers = {r.name for r in measured if r.improvement is not None and not better(r)}
    assert report.winner not in losers
    if report.accepted:
        w = next(r for r in measured if r.name == report.winner)
        assert w.improvement is not None and w.improvement > 0 and better(w)
        assert confident_gain(w) > task.min_gain
        assert report.improvement == w.improvement
        assert report.stress and report.stress["ok"]
    else:
        assert report.winner == "EEVDF"
    # safety: every program loaded outside the verifier passed every verifier stage
    passed = {v.digest for v in box.verify_runs if v.ok and v.scope == "all"}
    assert box.loads and all(rec.verified and rec.digest in passed for rec in box.loads)
    assert backend.repository().results(workload="batch")  # results reached the policy repository
