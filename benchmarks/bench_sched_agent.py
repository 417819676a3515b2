"""Sched-agent benchmark: goal inference, optimization vs EEVDF and the best seed, cost, head-to-head.

Why: issue 6's evaluation.  Everything runs on one aios kernel with the embedded SmolLM2 (or
``--model``) and the real sched_ext toolchain in the 2-vCPU qemu micro-VM:

1. Goal inference on the 8 labelled batch workload types (40 tasks, 39 short + 1 long): the
   agent's observation + planning steps (cheap profile tier, then the LLM constrained to the
   goal list) — accuracy against the registry's labels.
2. Optimization: for each workload the sched-agent runs its loop (compose mode), then ONE boot
   measures EEVDF, every seed scheduler, the kernel's own example schedulers that verify unchanged
   (scx_simple, scx_central, scx_flatcg, …, from the guest kernel's tools/sched_ext) and the
   agent's final scheduler, interleaved, repeated — so "agent vs EEVDF", "agent vs best seed" and
   "agent vs best upstream" come from the same boot.
3. Cost: wall time, LLM tokens, verification runs per workload ($0: local model).
4. Head-to-head on the schbench-like p99 run in the scx-forge default shape (4 message threads).

Outputs ``benchmarks/results/sched_agent.{json,md,png}`` (``--stem`` names another set).

    python benchmarks/bench_sched_agent.py                       # full run (~30-60 min under TCG)
    python benchmarks/bench_sched_agent.py --workloads batch --iterations 3 --skip-h2h
    # a ~25 min subset: goal inference reused, two workloads and the head-to-head, 2 final reps
    python benchmarks/bench_sched_agent.py --goal-from benchmarks/results/sched_agent.json \
        --workloads batch,schbench --iterations 3 --final-reps 2 --stress-seconds 30 \
        --upstream scx_simple,scx_central,scx_flatcg,scx_qmap --stem sched_agent_upstream
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_TYPES = [
    "batch-compress",
    "batch-checksum",
    "batch-sort",
    "batch-logscan",
    "batch-index",
    "batch-compile",
    "batch-map",
    "batch-pipeline",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ parts


def goal_inference(kernel: Any, workloads: list[str]) -> dict[str, Any]:
    """Observation + planning's goal step for each labelled workload, as an agent's syscalls."""
    from aios.agents.sched_agent import GOALS, goal_examples, infer_goal
    from aios.sched_ext.workloads import get_workload
    from aios.sdk.calls import tool_call
    from aios.sdk.runtime import agent_context, chat

    rows = []
    with agent_context(kernel, "goal-eval"):
        for name in workloads:
            w = get_workload(name)
            t0 = time.time()
            prof = tool_call("sched_profile", {"workload": name, "tier": "summary"}, timeout=1800)["result"]
            t_prof = time.time() - t0
            tokens = {"prompt": 0, "completion": 0}

            def ask(messages: list[dict], choices: list[str], tokens: dict[str, int] = tokens) -> str:
                res = chat(messages, choices=choices, max_new_tokens=16)
                tokens["prompt"] += res.response.prompt_tokens
                tokens["completion"] += res.response.completion_tokens
                return res.text

            t1 = time.time()
            goal = infer_goal(ask, name, None, prof, examples=goal_examples)
            rows.append(
                {
                    "workload": name,
                    "label": str(w.goal),
                    "inferred": GOALS[goal],
                    "correct": GOALS[goal] == str(w.goal),
                    "profile_s": round(t_prof, 1),
                    "llm_s": round(time.time() - t1, 1),
                    "tokens": tokens,
                    "profile_text": prof.get("text", "")[:400],
                }
            )
            log(
                f"goal {name}: label {w.goal} inferred {GOALS[goal]} {'OK' if rows[-1]['correct'] else 'MISS'}"
            )
    acc = sum(r["correct"] for r in rows) / max(1, len(rows))
    return {"accuracy": acc, "rows": rows}


def verified_seeds(box: Any) -> dict[str, Any]:
    """Verify every seed scheduler (one boot for all) so they may be measured."""
    from aios.sched_ext.tools import SCHEDULERS_DIR

    srcs = {p.name.removesuffix(".bpf.c"): p.read_text() for p in sorted(SCHEDULERS_DIR.glob("*.bpf.c"))}
    out = {}
    for (name, src), v in zip(srcs.items(), box.verify_batch(list(srcs.values())), strict=True):
        if v["ok"]:
            out[name] = src
        else:
            log(f"seed {name} failed verification: {v['stage']}: {v['reason'][:200]}")
    return out


def verified_upstream(names: list[str] | None = None) -> list[Any]:
    """The kernel's example schedulers that pass every verifier stage unchanged (one boot for all).

    They are verified here, outside the agent's toolbox, so the agent never sees them: they are
    peers to beat, not material.  Refused ones are logged with their one-line reason.  ``names``
    (``--upstream``) picks some of them; every one in the final boot adds its runs to it.
    """
    from aios.sched_ext.measure import VerifiedObject
    from aios.sched_ext.setup import ensure_setup
    from aios.sched_ext.verifier import verify_many

    setup = ensure_setup(progress=False)
    if setup.scx_dir is None or setup.scx_include is None:
        log(f"no upstream schedulers: {setup.scx_missing or 'run `aios sched setup`'}")
        return []
    srcs = sorted(setup.scx_dir.glob("*.bpf.c"))
    if names:
        unknown = set(names) - {s.name.removesuffix(".bpf.c") for s in srcs}
        if unknown:
            raise SystemExit(f"--upstream: no such example in {setup.scx_dir}: {', '.join(sorted(unknown))}")
        srcs = [s for s in srcs if s.name.removesuffix(".bpf.c") in names]
    out = []
    for src, v in zip(srcs, verify_many(srcs, setup=setup), strict=True):
        name = src.name.removesuffix(".bpf.c")
        if v.ok:
            out.append(VerifiedObject.from_verdict(name, v))
        else:
            log(f"upstream {name} refused at {v.failed_stage}: {v.reason[:160]}")
    return out


def final_comparison(
    box: Any, workload: str, seeds: dict[str, str], agent_src: str | None, reps: int, upstream: list[Any] = ()
) -> dict:
    """One boot: EEVDF, every seed, and the agent's final scheduler, interleaved, ``reps`` times.

    An agent winner that is byte for byte one of the seeds is not measured twice: it *is* that
    seed, so it gets that seed's numbers (measuring it again would only add noise to "agent vs
    best seed").
    """
    from aios.sched_ext.measure import VerifiedObject
    from aios.sched_ext.tools import digest

    objs = []
    for name, src in seeds.items():
        d = digest(src)
        objs.append(VerifiedObject(name, box.source_path(src), box.objects[d], verdict=box.raw_verdicts[d]))
    same_as = next((n for n, src in seeds.items() if digest(src) == digest(agent_src or "")), None)
    if agent_src is not None and same_as is None:
        d = digest(agent_src)
        objs.append(
            VerifiedObject("agent", box.source_path(agent_src), box.objects[d], verdict=box.raw_verdicts[d])
        )
    from aios.sched_ext.tools import LoadRecord, ops_name

    for o in objs:  # every one of them passed all verifier stages in this toolbox (asserted)
        src = Path(o.source).read_text()
        assert box.fully_verified(src)
        box.loads.append(LoadRecord(digest(src), ops_name(src) or "", "vm-measure", True))
    for o in upstream:  # verified in this run by verified_upstream(); measure_objects refuses any that were not
        assert o.verdict.ok
    results = box.backend.measure_objects([*objs, *upstream], workload, reps)
    out = {}
    for r in results:
        metrics = {
            k: {
                "eevdf": m.baseline.mean,
                "sched": m.candidate.mean,
                "improvement": m.improvement,
                "paired_min": m.paired_improvement.min,
                "paired_max": m.paired_improvement.max,
                "better": m.better,
            }
            for k, m in r.metrics.items()
        }
        out[r.scheduler] = {
            "improvement": r.improvement,
            "primary_metric": r.primary_metric,
            "stayed_enabled": r.stayed_enabled,
            "metrics": metrics,
        }
    if same_as is not None:
        out["agent"] = dict(out[same_as], same_as=same_as)
    return out


#: What the user says when asking for an optimization (the agent maps it to a goal it can measure).
USER_GOALS = {
    "batch": "make the average job completion time lower",
    "schbench": "lower the p99 wake-up latency",
    "schbench-forge": "lower the p99 wake-up latency",
    "build": "shorter makespan for the whole build",
    "cyclictest": "lower the p99 wake-up latency",
}
#: For the labelled batch types the user names the labelled goal in words, so that optimization is
#: judged on its own (goal inference is evaluated separately, from the workload's description).
_GOAL_WORDS = {
    "min_makespan": "shorter makespan: the batch is done when its last job is",
    "min_mean_completion": "lower mean completion time of the jobs",
    "max_throughput": "higher throughput: more streams per second",
}
USER_GOALS.update(
    {
        w: _GOAL_WORDS[w_goal]
        for w, w_goal in {
            "batch-compress": "min_makespan",
            "batch-checksum": "min_mean_completion",
            "batch-sort": "min_makespan",
            "batch-logscan": "min_mean_completion",
            "batch-index": "min_mean_completion",
            "batch-compile": "min_makespan",
            "batch-map": "min_makespan",
            "batch-pipeline": "max_throughput",
        }.items()
    }
)


def optimize(
    kernel: Any, box: Any, workload: str, args: argparse.Namespace, seeds: dict[str, str], upstream: list[Any] = ()
) -> dict:
    from aios.agents.sched_agent import Budget, OptimizeReport, OptimizeTask, SchedAgent

    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        log(f"  {workload}: {line}")

    task = OptimizeTask(
        workload=workload,
        goal=USER_GOALS.get(workload),
        mode="compose",
        budget=Budget(iterations=args.iterations, time_s=args.time_budget),
        reps=args.reps,
        stress_s=args.stress_seconds,
        seeds=args.seeds,
    )
    agent = SchedAgent(name=f"sched-agent-{workload}", progress=progress)
    t0 = time.time()
    run = agent.start(kernel, task)
    if not run.ok:
        return {"workload": workload, "error": run.error, "progress": lines}
    report = OptimizeReport.model_validate(run.output)
    log(f"{workload}: agent done in {time.time() - t0:.0f}s: winner {report.winner}")
    t1 = time.time()
    final = final_comparison(
        box, workload, seeds, report.winner_source if report.accepted else None, args.final_reps, upstream
    )
    compare_s = time.time() - t1
    prim = next(iter(final.values()))["primary_metric"]
    best_seed = max(seeds, key=lambda s: final[s]["improvement"]) if seeds else None
    ups = [o.name for o in upstream if o.name in final]
    best_up = max(ups, key=lambda s: final[s]["improvement"]) if ups else None
    agent_final = final.get("agent")
    agent_imp = agent_final["improvement"] if agent_final else 1.0  # kept EEVDF: 1.0x by definition
    row = {
        "workload": workload,
        "user_goal": USER_GOALS.get(workload),
        "goal": report.goal,
        "metric": report.metric,
        "primary_metric": prim,
        "winner": report.winner,
        "accepted": report.accepted,
        "loop_improvement": report.improvement,
        "loop_spread": report.spread,
        "agent_vs_eevdf": agent_imp,
        "best_seed": best_seed,
        "best_seed_vs_eevdf": final[best_seed]["improvement"] if best_seed else None,
        "agent_vs_best_seed": agent_imp / final[best_seed]["improvement"] if best_seed else None,
        "upstream": ups,
        "best_upstream": best_up,
        "best_upstream_vs_eevdf": final[best_up]["improvement"] if best_up else None,
        "agent_vs_best_upstream": agent_imp / final[best_up]["improvement"] if best_up else None,
        "final": final,
        "iterations": [it.model_dump() for it in report.iterations],
        "confirmation": [it.model_dump() for it in report.confirmation],
        "stress_failures": report.stress_failures,
        "stress": report.stress,
        "stop_reason": report.stop_reason,
        "cost": report.cost.model_dump(),
        "final_compare_s": round(compare_s, 1),
        "winner_source": report.winner_source,
        "progress": lines,
    }
    if agent_final and "requests_per_s" in agent_final["metrics"]:
        row["agent_throughput_vs_eevdf"] = agent_final["metrics"]["requests_per_s"]["improvement"]
    if best_seed and "requests_per_s" in final[best_seed]["metrics"]:
        row["best_seed_throughput_vs_eevdf"] = final[best_seed]["metrics"]["requests_per_s"]["improvement"]
    return row


# ------------------------------------------------------------------------------------ output


def fmt(x: Any, suffix: str = "x") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def per_rep(row: dict[str, Any], name: str | None) -> str:
    """' (min-max)' of a scheduler's per-rep ratio on the primary metric in the final boot."""
    f = (row.get("final") or {}).get(name or "")
    if not f:
        return ""
    m = f["metrics"][row["primary_metric"]]
    return f" ({m['paired_min']:.2f}-{m['paired_max']:.2f})"


def level_with_best_seed(row: dict[str, Any]) -> bool:
    """The agent's best rep reaches the best seed's worst rep (EEVDF kept: 1.0 against it)."""
    best = row["final"][row["best_seed"]]["metrics"][row["primary_metric"]]
    agent = row["final"].get("agent")
    top = agent["metrics"][row["primary_metric"]]["paired_max"] if agent else 1.0
    return top >= best["paired_min"]


def write_outputs(data: dict[str, Any], out: Path, stem: str = "sched_agent") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    ups = ", ".join(data.get("upstream") or []) or "none"
    load = data.get("loadavg_at_start")
    md = [
        f"# sched-agent benchmark ({data['model']}, {data['device']})",
        "",
        f"Date: {data['date']}. Total wall time {data['wall_s'] / 60:.1f} min. Improvements are "
        '"times better than EEVDF" in the metric\'s direction (>1 = better), from one boot per workload '
        "with EEVDF, every seed, the kernel's example schedulers that verify unchanged (upstream: "
        f"{ups}) and the agent's final scheduler interleaved."
        + (f" Host load average at the start: {load} (2 cores)." if load is not None else ""),
        "",
    ]
    g = data.get("goal_inference")
    if g:
        md += [
            f"## Goal inference: {g['accuracy']:.0%} ({sum(r['correct'] for r in g['rows'])}/{len(g['rows'])})",
            "",
            "| workload | label | inferred | ok | profile s | LLM s |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['workload']} | {r['label']} | {r['inferred']} | {'yes' if r['correct'] else 'no'} | "
            f"{r['profile_s']} | {r['llm_s']} |"
            for r in g["rows"]
        ]
        md.append("")
    opt = data.get("optimization", [])
    if opt:
        md += [
            "## Optimization (agent's final scheduler vs EEVDF and vs the best seed, same boot)",
            "",
            "Per-rep min-max in brackets. 'accepted gain' is the winner's gain in the agent's own "
            "confirmation boot (before this final boot).",
            "",
            "| workload | goal metric | winner | agent vs EEVDF | best seed | best seed vs EEVDF | agent vs best seed "
            "| best upstream | best upstream vs EEVDF | agent vs best upstream | accepted gain ± spread | stop |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in opt:
            if "error" in r:
                md.append(f"| {r['workload']} | error: {r['error'][:80]} |")
                continue
            spread = f" ± {r['loop_spread']:.0%}" if r.get("loop_spread") is not None else ""
            gain = f"{r['loop_improvement']:+.0%}{spread}" if r["accepted"] else "- (kept EEVDF)"
            md.append(
                f"| {r['workload']} | {r['primary_metric']} | {r['winner']} | {fmt(r['agent_vs_eevdf'])}"
                f"{per_rep(r, 'agent')} | {r['best_seed']} | {fmt(r['best_seed_vs_eevdf'])}"
                f"{per_rep(r, r['best_seed'])} | {fmt(r['agent_vs_best_seed'])} | {r.get('best_upstream') or '-'} | "
                f"{fmt(r.get('best_upstream_vs_eevdf'))}{per_rep(r, r.get('best_upstream'))} | "
                f"{fmt(r.get('agent_vs_best_upstream'))} | {gain} | {r['stop_reason']} |"
            )
        ok = [r for r in opt if "error" not in r]
        if ok:
            geo = math.prod(r["agent_vs_eevdf"] for r in ok) ** (1 / len(ok))
            level = sum(1 for r in ok if level_with_best_seed(r))
            md += [
                "",
                f"Across {len(ok)} workloads: geometric mean agent vs EEVDF **{geo:.2f}x**; agent at or above "
                f"EEVDF on {sum(r['agent_vs_eevdf'] >= 1.0 for r in ok)}; agent level with or above the best seed "
                f"(its per-rep range reaches the best seed's) on {level}.",
            ]
        md += ["", "### Per-iteration progress", ""]
        for r in opt:
            if "error" in r:
                continue
            md += [
                f"**{r['workload']}**",
                "",
                "| # | candidate | origin | verdict | metric vs EEVDF |",
                "|---|---|---|---|---|",
            ]
            rows = list(r["iterations"]) + [
                dict(it, origin="confirm: " + it["origin"]) for it in r.get("confirmation", [])
            ]
            for it in rows:
                v = (
                    "ok"
                    if it["verdict"]["ok"]
                    else f"rejected at {it['verdict']['stage']}: {it['verdict']['reason'][:60]}"
                )
                m = (
                    "-"
                    if it["improvement"] is None
                    else (f"{it['candidate']:.4g} vs {it['baseline']:.4g} ({it['improvement']:+.1%})")
                )
                md.append(f"| {it['index']} | {it['name']} | {it['origin']} | {v} | {m} |")
            for f in r.get("stress_failures", []):
                md.append(f"| - | {f['name']} | stress run | failed: {f['reason'][:80]} | - |")
            md.append("")
        md += [
            "## Cost per optimized workload ($0: local model)",
            "",
            "| workload | wall min | LLM calls | tokens (prompt+completion) | verification runs | measurements | "
            "stress s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in opt:
            if "error" in r:
                continue
            c = r["cost"]
            stress_s = (r.get("stress") or {}).get("seconds")
            md.append(
                f"| {r['workload']} | {c['wall_s'] / 60:.1f} | {c['llm_calls']} | "
                f"{c['prompt_tokens'] + c['completion_tokens']} | {c['verify_runs']} | {c['measure_runs']} | "
                f"{'-' if stress_s is None else f'{stress_s:.0f}'} |"
            )
        md.append("")
    h2h = data.get("head_to_head")
    if h2h and "error" not in h2h:
        md += [
            "## Head-to-head: schbench-like p99 wake-up latency, scx-forge default shape (4 message threads)",
            "",
            "| scheduler | p99 wake-up us | vs EEVDF | requests/s vs EEVDF |",
            "|---|---|---|---|",
        ]
        fin = h2h["final"]
        any_m = next(iter(fin.values()))["metrics"]
        md.append(f"| EEVDF | {any_m['p99_wakeup_us']['eevdf']:.0f} | 1.00x | 1.00x |")
        best_up = [h2h["best_upstream"]] if h2h.get("best_upstream") else []
        for name in (["agent"] if "agent" in fin else []) + [h2h["best_seed"]] + best_up:
            m = fin[name]["metrics"]
            md.append(
                f"| {name if name != 'agent' else 'agent: ' + h2h['winner']} | {m['p99_wakeup_us']['sched']:.0f} | "
                f"{m['p99_wakeup_us']['improvement']:.2f}x | {m.get('requests_per_s', {}).get('improvement', float('nan')):.2f}x |"
            )
        if "agent" not in fin:
            md.append(f"| agent (kept EEVDF) | {any_m['p99_wakeup_us']['eevdf']:.0f} | 1.00x | 1.00x |")
        md.append("")
    md += [
        "## Safety",
        "",
        f"Programs loaded outside the verifier: {data['safety']['loads']}; all passed every "
        f"verifier stage: {data['safety']['all_verified']}. Verification runs: {data['safety']['verify_runs']} "
        f"({data['safety']['rejected']} rejected, each with its reason in the JSON).",
        "",
    ]
    if data.get("notes"):
        md += ["## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    (out / f"{stem}.md").write_text("\n".join(md))
    plot(data, out / f"{stem}.png")


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data.get("optimization", []) if "error" not in r]
    h2h = data.get("head_to_head")
    if h2h and "error" not in h2h:
        rows = rows + [dict(h2h, workload=h2h["workload"] + " (h2h)")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if rows:
        names = [r["workload"] for r in rows]
        x = range(len(names))
        axes[0].bar([i - 0.27 for i in x], [r["agent_vs_eevdf"] for r in rows], 0.27, label="sched-agent")
        axes[0].bar([i for i in x], [r["best_seed_vs_eevdf"] or 0 for r in rows], 0.27, label="best seed")
        axes[0].bar(
            [i + 0.27 for i in x], [r.get("best_upstream_vs_eevdf") or 0 for r in rows], 0.27, label="best upstream"
        )
        axes[0].axhline(1.0, color="k", lw=1, ls="--", label="EEVDF")
        axes[0].set_xticks(list(x), names, rotation=35, ha="right")
        axes[0].set_ylabel("times better than EEVDF (goal metric)")
        axes[0].set_title("Optimization (same boot, interleaved reps)")
        axes[0].legend()
    g = data.get("goal_inference")
    if g:
        names = [r["workload"].removeprefix("batch-") for r in g["rows"]]
        colors = ["tab:green" if r["correct"] else "tab:red" for r in g["rows"]]
        axes[1].bar(names, [1] * len(names), color=colors)
        for i, r in enumerate(g["rows"]):
            axes[1].text(
                i,
                0.5,
                f"label {r['label']}\ninferred {r['inferred']}",
                ha="center",
                va="center",
                rotation=90,
                fontsize=7,
                color="white",
            )
        axes[1].set_yticks([])
        axes[1].set_title(f"Goal inference: {g['accuracy']:.0%} correct (green) / wrong (red)")
        axes[1].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--workloads", default="batch,schbench", help="optimized workloads (comma-separated)")
    ap.add_argument("--h2h", default="schbench-forge", help="head-to-head workload ('' to skip)")
    ap.add_argument("--skip-h2h", action="store_true")
    ap.add_argument("--skip-goal", action="store_true")
    ap.add_argument("--goal-from", default=None, help="reuse the goal-inference part of an earlier JSON")
    ap.add_argument("--goal-workloads", default=",".join(BATCH_TYPES))
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=6, help="repository schedulers screened in round one")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per measurement inside the loop")
    ap.add_argument("--final-reps", type=int, default=3, help="repetitions of the final same-boot comparison")
    ap.add_argument("--stress-seconds", type=float, default=60.0)
    ap.add_argument(
        "--time-budget", type=float, default=1200.0, help="per-workload wall-time budget of the loop"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--no-upstream", action="store_true", help="leave the kernel's example schedulers out")
    ap.add_argument(
        "--upstream", default="", help="only these kernel examples (comma-separated, e.g. scx_simple,scx_qmap)"
    )
    ap.add_argument("--stem", default="sched_agent", help="output file names: STEM.{json,md,png}")
    args = ap.parse_args()

    import tempfile

    from aios.kernel.embedding import MiniLMEmbedder
    from aios.kernel.kernel import Kernel
    from aios.sched_ext.tools import SchedToolbox, ToolchainBackend, register_sched_tools

    t_all = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench-sched-agent-"))
    backend = ToolchainBackend(repository_path=work / "repo", embedder=MiniLMEmbedder())
    box = SchedToolbox(backend=backend, workdir=work / "programs")
    data: dict[str, Any] = {
        "model": args.model,
        "device": "2-vCPU qemu TCG micro-VM (guest kernel 7.2, sched_ext)",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "args": vars(args),
        "notes": list(args.note),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
    }
    out_dir, stem = Path(args.out), args.stem
    with Kernel(model=args.model, data_dir=work / "data") as kernel:  # MiniLM: goal examples are retrieved
        register_sched_tools(kernel, box)
        for name in (
            "goal-eval",
            *[f"sched-agent-{w}" for w in args.workloads.split(",")],
            "sched-agent-h2h",
        ):
            kernel.modules["access"].set_group(name, "admin")
        if args.goal_from:
            data["goal_inference"] = json.loads(Path(args.goal_from).read_text())["goal_inference"]
            data["notes"].append(
                f"goal inference reused from an earlier run of this script ({args.goal_from})"
            )
        elif not args.skip_goal:
            log("goal inference")
            data["goal_inference"] = goal_inference(kernel, [w for w in args.goal_workloads.split(",") if w])
            write_outputs(data | {"wall_s": time.time() - t_all, "safety": safety(box)}, out_dir, stem)
        log("verifying the seed schedulers")
        seeds = verified_seeds(box)
        upstream = [] if args.no_upstream else verified_upstream([n for n in args.upstream.split(",") if n])
        data["upstream"] = [o.name for o in upstream]
        data["optimization"] = []
        for w in [w for w in args.workloads.split(",") if w]:
            log(f"optimizing {w}")
            data["optimization"].append(optimize(kernel, box, w, args, seeds, upstream))
            write_outputs(data | {"wall_s": time.time() - t_all, "safety": safety(box)}, out_dir, stem)
        if args.h2h and not args.skip_h2h:
            log(f"head-to-head on {args.h2h}")
            data["head_to_head"] = optimize(kernel, box, args.h2h, args, seeds, upstream)
    data["wall_s"] = time.time() - t_all
    data["safety"] = safety(box)
    write_outputs(data, out_dir, stem)
    log(f"done in {data['wall_s'] / 60:.1f} min; results in {args.out}/{stem}.*")
    return 0


def safety(box: Any) -> dict[str, Any]:
    passed = {v.digest for v in box.verify_runs if v.ok and v.scope == "all"}
    return {
        "loads": len(box.loads),
        "all_verified": all(r.verified and r.digest in passed for r in box.loads),
        "verify_runs": len(box.verify_runs),
        "rejected": sum(not v.ok for v in box.verify_runs),
        "rejections": [
            {"name": v.name, "stage": v.stage, "reason": v.reason[:300]} for v in box.verify_runs if not v.ok
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
