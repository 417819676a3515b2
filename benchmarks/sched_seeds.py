"""Every seed scheduler, and the kernel's own example schedulers, against EEVDF on every workload.

Why: the seed schedulers are the policy repository's starting point and the sched-agent's baseline;
this records, per workload, how each one compares with the kernel's default under the same boot,
plus what one verification pass costs. The kernel's examples (scx_simple, scx_central, scx_flatcg,
…: ``tools/sched_ext`` of the guest kernel's source, fetched by ``aios sched setup``) are verified
unchanged — those that need their user-space part are refused with the reason — and measured the
same way, as peers. Results: ``benchmarks/results/sched_seeds.{json,md,png}``.

Usage::

    python benchmarks/sched_seeds.py [--reps 3] [--batch-reps 1] [--workloads batch,schbench,...]
    python benchmarks/sched_seeds.py --upstream            # seeds and upstream examples, same boots
    python benchmarks/sched_seeds.py --only-upstream --merge --workloads batch --record
          # add the upstream examples' rows to the existing results, and store them in the repository

One VM boot per workload: EEVDF and all schedulers run interleaved in it (see ``measure_objects``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aios.sched_ext.measure import MeasureError, VerifiedObject, measure_objects  # noqa: E402
from aios.sched_ext.workloads import WORKLOADS, get_workload  # noqa: E402

SCHED_DIR = ROOT / "aios" / "sched_ext" / "schedulers"
RESULTS = ROOT / "benchmarks" / "results"
MAIN_WORKLOADS = ["batch", "schbench", "build", "cyclictest", "hackbench", "stressng-mix"]


def verify_seeds() -> tuple[list[VerifiedObject], dict]:
    """Run the staged verifier on every seed; return the passing objects and the cost of a pass."""
    objs: list[VerifiedObject] = []
    costs: dict = {"per_scheduler": {}}
    from aios.sched_ext import verifier

    for src in tqdm(sorted(SCHED_DIR.glob("*.bpf.c")), desc="verify", unit="sched"):
        name = src.name.removesuffix(".bpf.c")
        t0 = time.monotonic()
        verdict = verifier.verify(src)  # one full pass: compile, static, kernel verifier, dynamic
        dt = time.monotonic() - t0
        stages = {v.stage: round(v.duration_s, 2) for v in verdict.stages}
        costs["per_scheduler"][name] = {"ok": verdict.ok, "seconds": round(dt, 2), "stages": stages,
                                        "mode": "staged verifier (one micro-VM boot per pass)"}
        if verdict.ok:
            objs.append(VerifiedObject.from_verdict(name, verdict))
    secs = [c["seconds"] for c in costs["per_scheduler"].values()]
    costs["mean_seconds_per_pass"] = round(sum(secs) / max(1, len(secs)), 2)
    return objs, costs


def verify_upstream() -> tuple[list[VerifiedObject], dict, dict[str, dict[str, int]]]:
    """Verify every example scheduler of the kernel's tools/sched_ext, unchanged, in one boot.

    Returns the passing objects, a per-program table of stage verdicts (the refused ones with their
    one-line reason), and the read-only globals each passing one got from its loader's replay.
    """
    from aios.sched_ext.setup import ensure_setup
    from aios.sched_ext.verifier import verify_many

    setup = ensure_setup(progress=False)
    if setup.scx_dir is None or setup.scx_include is None:
        raise SystemExit(f"no kernel sched_ext tree in the cache: {setup.scx_missing or 'run `aios sched setup`'}")
    srcs = sorted(setup.scx_dir.glob("*.bpf.c"))
    t0 = time.monotonic()
    verdicts = verify_many(srcs, setup=setup)
    table: dict = {"source": setup.scx_source, "clang": setup.clang, "seconds": round(time.monotonic() - t0, 1),
                   "per_scheduler": {}}
    objs: list[VerifiedObject] = []
    tunables: dict[str, dict[str, int]] = {}
    for src, v in zip(srcs, verdicts, strict=True):
        name = src.name.removesuffix(".bpf.c")
        table["per_scheduler"][name] = {
            "ok": v.ok, "failed_stage": v.failed_stage, "reason": v.reason[:300],
            "stages": {s.stage: ("skip" if s.skipped else "pass" if s.ok else "FAIL") for s in v.stages},
            "load_plan": v.facts.get("load_plan", {})}
        if v.ok:
            objs.append(VerifiedObject.from_verdict(name, v))
            tunables[name] = dict(v.facts.get("load_plan", {}).get("tunables", {}))
        tqdm.write(f"upstream {name}: {'verified' if v.ok else f'refused at {v.failed_stage}: {v.reason[:160]}'}")
    return objs, table, tunables


def run(workloads: list[str], reps: int, batch_reps: int, merge: bool = False, upstream: bool = False,
        only_upstream: bool = False, record: bool = False) -> dict:
    """Verify the seeds (and/or the upstream examples), then measure them on ``workloads``.

    ``merge`` keeps other workloads' rows and, with ``only_upstream``, the seeds' results of the
    workloads re-run (the upstream rows come from their own boot then; say so when comparing).
    ``record`` stores the upstream entries and every measured result in the policy repository.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    objs, costs = ([], {"per_scheduler": {}}) if only_upstream else verify_seeds()
    up_names: list[str] = []
    up_table: dict = {}
    up_tunables: dict[str, dict[str, int]] = {}
    if upstream or only_upstream:
        up_objs, up_table, up_tunables = verify_upstream()
        up_names = [o.name for o in up_objs]
        objs += up_objs
    data: dict = {"host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "schedulers": [o.name for o in objs], "verification": costs, "workloads": {}}
    old = RESULTS / "sched_seeds.json"
    if merge and old.is_file():
        prev = json.loads(old.read_text())
        data["workloads"] = prev.get("workloads", {})
        if only_upstream:
            data["verification"] = prev.get("verification", costs)
            data["schedulers"] = [s for s in prev.get("schedulers", []) if s not in up_names] + up_names
            data["date"] = prev.get("date", data["date"])
            data["upstream_date"] = time.strftime("%Y-%m-%d %H:%M:%S")
            data["loadavg_at_start"] = dict(prev.get("loadavg_at_start", {}))   # one entry per run merged
            data["upstream"] = list(prev.get("upstream", []))
    if up_names or up_table:
        # a merge keeps upstream schedulers measured by earlier runs (one may fail a later run's verification)
        data["upstream"] = sorted(set(up_names) | set(data.get("upstream", [])))
        data["schedulers"] = [s for s in data["schedulers"] if s not in data["upstream"]] + data["upstream"]
        data["upstream_verification"] = up_table
    load0 = os.getloadavg()[0]
    data.setdefault("loadavg_at_start", {})[time.strftime("%H:%M:%S")] = round(load0, 2)
    repo = _repository(up_tunables) if record else None
    for wl in tqdm(workloads, desc="workloads", unit="wl"):
        w = get_workload(wl)
        r = batch_reps if wl.startswith("batch-") else reps
        t0 = time.monotonic()
        try:
            results = measure_objects(objs, w, reps=r)
        except MeasureError as exc:
            if only_upstream and "results" in data["workloads"].get(wl, {}):
                data["workloads"][wl]["upstream_error"] = str(exc)[:2000]   # the seeds' row stays
            else:
                data["workloads"][wl] = {"error": str(exc)[:2000]}
            tqdm.write(f"{wl}: FAILED {str(exc)[:300]}")
            continue
        rows = [x.model_dump() for x in results]
        entry = {"goal": str(w.goal), "primary_metric": w.primary_metric, "reps": r,
                 "vm_seconds": round(time.monotonic() - t0, 1), "results": rows}
        prev_entry = data["workloads"].get(wl, {})
        if only_upstream and "results" in prev_entry:
            kept = [x for x in prev_entry["results"] if x["scheduler"] not in up_names]
            entry = dict(prev_entry, results=kept + rows, upstream_vm_seconds=entry["vm_seconds"],
                         upstream_reps=r, upstream_boot="separate boot from the seeds (merged)")
            entry.pop("upstream_error", None)   # an earlier run's failure, now measured
        data["workloads"][wl] = entry
        for x in results:
            tqdm.write(x.summary())
            if repo is not None:
                repo.record_result(x, tunables=up_tunables.get(x.scheduler, {}))
        write_outputs(data)
    write_outputs(data)
    if repo is not None:
        repo.close()
    return data


def _repository(up_tunables: dict[str, dict[str, int]]):
    """The policy repository with the upstream examples added (origin ``upstream``) next to the seeds."""
    from aios.sched_ext.repository import PolicyRepository, load_upstream_entries
    from aios.sched_ext.setup import ensure_setup

    repo = PolicyRepository()
    setup = ensure_setup(progress=False)
    for e in load_upstream_entries(setup.scx_dir, up_tunables):
        repo.add(e)
    return repo


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}x"


def write_outputs(data: dict) -> None:
    (RESULTS / "sched_seeds.json").write_text(json.dumps(data, indent=1))
    scheds = data["schedulers"]
    ups = set(data.get("upstream", []))
    lines = ["# Seed schedulers vs EEVDF (2-vCPU qemu TCG micro-VM, same boot, interleaved)", "",
             f"Date: {data['date']}. Cells: improvement over EEVDF on the workload's primary metric "
             "(>1 = better than EEVDF; mean of reps, with per-rep min-max).", "",
             "| workload | goal | metric | EEVDF | " + " | ".join(s + (" (upstream)" if s in ups else "")
                                                                 for s in scheds) + " |",
             "|---|---|---|---|" + "---|" * len(scheds)]
    for wl, entry in data["workloads"].items():
        if "error" in entry:
            lines.append(f"| {wl} | | | error: {entry['error'][:80]} |" + " |" * len(scheds))
            continue
        by = {r["scheduler"]: r for r in entry["results"]}
        pm = entry["primary_metric"]
        base = next(iter(by.values()))["metrics"][pm]["baseline"]["mean"] if by else float("nan")
        unit = next(iter(by.values()))["metrics"][pm]["unit"] if by else ""
        cells = []
        for s in scheds:
            r = by.get(s)
            if not r:
                cells.append("-")
                continue
            m = r["metrics"][pm]
            p = m["paired_improvement"]
            flag = "" if r["stayed_enabled"] else " (ejected)"
            cells.append(f"**{_fmt(m['improvement'])}** ({p['min']:.2f}-{p['max']:.2f}){flag}")
        lines.append(f"| {wl} | {entry['goal']} | {pm} | {base:.1f} {unit} | " + " | ".join(cells) + " |")
    if data.get("upstream_date"):
        loads = ", ".join(f"{v} at {k}" for k, v in data.get("loadavg_at_start", {}).items())
        lines += ["", f"Upstream columns: measured on {data['upstream_date'][:10]} in their own boot per workload "
                  "(EEVDF and the upstream schedulers interleaved), merged next to the seeds' rows; each is "
                  "relative to the EEVDF runs of its own boot (the EEVDF column is the seeds' boot). Host load "
                  f"average at the start of each run: {loads or 'n/a'} on 2 cores, shared with other work: absolute times are "
                  "inflated, same-boot ratios less so.", ""]
    uv = data.get("upstream_verification")
    if uv:
        lines += ["", f"## The kernel's example schedulers ({uv.get('source', '')}, built with {uv.get('clang', '')})",
                  "", "Verified unchanged; one boot for all that reach the kernel stages "
                  f"({uv.get('seconds')} s).", "",
                  "| program | compile | static | kernel verifier | dynamic | verdict |", "|---|---|---|---|---|---|"]
        for name, row in uv["per_scheduler"].items():
            st = row["stages"]
            verdict = "verified" if row["ok"] else f"refused: {row['reason'][:140]}"
            lines.append(f"| {name} | {st.get('compile', '-')} | {st.get('static', '-')} | "
                         f"{st.get('kernel_verifier', '-')} | {st.get('dynamic', '-')} | {verdict} |")
    v = data["verification"]
    lines += ["", "## Verification cost", "",
              f"Mean seconds per full pass: {v.get('mean_seconds_per_pass')} "
              f"({next(iter(v['per_scheduler'].values()), {}).get('mode', '')})", "",
              "| scheduler | ok | seconds | stages |", "|---|---|---|---|"]
    for s, c in v["per_scheduler"].items():
        lines.append(f"| {s} | {c['ok']} | {c['seconds']} | {c['stages']} |")
    (RESULTS / "sched_seeds.md").write_text("\n".join(lines) + "\n")
    try:
        plot(data)
    except Exception as exc:  # the table matters more than the picture
        print(f"plot failed: {exc}", file=sys.stderr)


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = [w for w, e in data["workloads"].items() if "results" in e]
    scheds = data["schedulers"]
    if not wls:
        return
    fig, ax = plt.subplots(figsize=(max(9.0, 1.1 * len(wls)), 5))
    width = 0.8 / max(1, len(scheds))
    for i, s in enumerate(scheds):
        ys, lo, hi = [], [], []
        for w in wls:
            r = next((r for r in data["workloads"][w]["results"] if r["scheduler"] == s), None)
            if r is None:
                ys.append(0), lo.append(0), hi.append(0)
                continue
            m = r["metrics"][r["primary_metric"]]
            y = m["improvement"]
            ys.append(y)
            lo.append(max(0.0, y - m["paired_improvement"]["min"]))
            hi.append(max(0.0, m["paired_improvement"]["max"] - y))
        xs = [j + i * width for j in range(len(wls))]
        ax.bar(xs, ys, width, label=s, yerr=[lo, hi], capsize=2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(wls))])
    ax.set_xticklabels([f"{w}\n({data['workloads'][w]['primary_metric']})" for w in wls], rotation=30,
                       ha="right", fontsize=7)
    ax.set_ylabel("improvement over EEVDF (x, >1 better)")
    ax.set_title("Seed sched_ext schedulers vs EEVDF, 2-vCPU TCG micro-VM")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(RESULTS / "sched_seeds.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-reps", type=int, default=1, help="reps for the 8 batch-* types")
    ap.add_argument("--workloads", default=",".join(MAIN_WORKLOADS + sorted(
        w for w in WORKLOADS if w.startswith("batch-"))))
    ap.add_argument("--merge", action="store_true", help="keep results of workloads not re-run")
    ap.add_argument("--upstream", action="store_true", help="also the kernel's example schedulers, same boots")
    ap.add_argument("--only-upstream", action="store_true",
                    help="only the kernel's example schedulers (use with --merge to add their rows)")
    ap.add_argument("--record", action="store_true", help="store upstream entries and results in the repository")
    a = ap.parse_args()
    run([w for w in a.workloads.split(",") if w], a.reps, a.batch_reps, a.merge, a.upstream, a.only_upstream,
        a.record)


if __name__ == "__main__":
    main()
