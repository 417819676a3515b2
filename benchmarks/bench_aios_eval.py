"""The AIOS paper's evaluation, reproduced (and beaten) on the embedded SmolLM2.

    python benchmarks/bench_aios_eval.py            # the whole evaluation (~12-16 min on 2 busy CPU cores)
    aios bench aios_eval                            # the same
    python benchmarks/bench_aios_eval.py --model tiny --trials 1 --mix-trials 1   # smoke test, seconds

1. Consistency. The paper's three agents (math, narrative, recommendation) run alone, then all
   three at once under each scheduler, temperature 0. Concurrent outputs are compared with the
   solo ones: BLEU (sacrebleu, 0..1) and cosine similarity of MiniLM embeddings (offline). The
   engine decodes batch-invariantly (every step at the full batch width), so a request's tokens do
   not depend on who shares its batch or how often it was suspended: the target is BLEU = 1.0
   everywhere. A stress configuration (RR, quantum 2) adds forced suspensions on top.

2. Waiting and turnaround. (a) No kernel: the same requests (recorded from the solo runs, same
   rendered prompts, same lengths) run one after another with plain ``model.generate`` in arrival
   order; agent k waits for agents 1..k-1, as in the paper's baseline. (b) The kernel under FIFO,
   RR (small quantum), priority and SJF. Per agent: average waiting (time its LLM requests spent
   queued before first running) and turnaround (arrival to last answer) over the trials.
   A 12-agent mix with heavy-tailed answer lengths (8 ... 192 tokens) adds p90/p99; its agents
   arrive 20 ms apart in a seeded random order (a different order per trial, the same order for
   every policy and for the sequential baseline).

Capacity. The three agents run on ``--batch`` rows (default 4: all three decode together, the
kernel's main win over one-after-another). The 12-agent mix runs on ``--mix-batch`` rows (default
2): with far more agents than rows someone always waits, RR suspends, SJF and priority preempt,
which is the regime where the policy matters (with rows to spare every policy is "everyone runs").
A stress run adds three filler agents to the paper agents under RR with a 2-token quantum so the
consistency check covers requests suspended and resumed many times.

Targets: last agent's turnaround under the kernel <= 0.5x sequential; SJF mean turnaround <= 0.7x
FIFO on the mix; no agent's RR waiting above 2x its FIFO waiting.

Writes ``benchmarks/results/aios_eval.json``, ``aios_eval.md`` (the tables) and ``aios_eval.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import load_bench_model, pct  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import aios  # noqa: E402
from aios.agents import AGENTS, PAPER_AGENTS, ChatAgent  # noqa: E402
from aios.cli import format_table  # noqa: E402  (the one markdown table of the project)
from aios.kernel.engine import LLMEngine  # noqa: E402
from aios.kernel.kernel import Kernel, KernelConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
POLICIES = ("fifo", "rr", "priority", "sjf")

# The mix: heavy-tailed answer lengths (two long jobs carry half the tokens).
MIX_LENGTHS = [8, 8, 12, 12, 16, 16, 20, 24, 32, 48, 96, 192]
MIX_TOPICS = [
    "volcanoes",
    "the ocean",
    "bees",
    "trains",
    "the moon",
    "coffee",
    "chess",
    "rainforests",
    "bicycles",
    "glaciers",
    "the printing press",
    "jazz",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class Bench:
    """The loaded model, a shared embedder and the kernel settings every run shares."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        t0 = time.perf_counter()
        self.model, self.tok = load_bench_model(args.model)
        self.load_s = time.perf_counter() - t0
        self.embedder = None
        if args.model != "tiny":
            from aios.kernel.embedding import make_embedder

            self.embedder = make_embedder("minilm")
        self.data_root = Path(tempfile.mkdtemp(prefix="aios-eval-"))
        self._n = 0

    def kernel(self, scheduler: str, batch: int, quantum: int | None = None) -> Kernel:
        self._n += 1
        cfg = KernelConfig(
            model=self.args.model,
            scheduler=scheduler,
            quantum=quantum or self.args.quantum,
            max_batch_size=batch,
            data_dir=self.data_root / f"k{self._n}",  # fresh storage: no run sees another's data
            embedder="minilm" if self.embedder is not None else "hash",
        )
        k = Kernel(cfg, llm=LLMEngine(self.model, self.tok, cfg))
        if self.embedder is not None and "storage" in k.modules:
            k.modules["storage"].embedder = self.embedder  # one MiniLM for all kernels
        return k


def paper_agents(scale: float) -> list[aios.Agent]:
    # distinct priorities so the priority policy has something to decide (math first, story last)
    prio = {"math": -1, "narrative": 1, "recommendation": 0}
    return [AGENTS[n](n, scale=scale, priority=prio[n]) for n in PAPER_AGENTS]


def mix_agents(scale: float) -> list[aios.Agent]:
    agents = []
    for i, (n, topic) in enumerate(zip(MIX_LENGTHS, MIX_TOPICS, strict=True)):
        a = ChatAgent(f"mix{i:02d}-{n}", tokens=n, scale=scale)
        a.default_task = f"Write a long, detailed essay about {topic}."
        agents.append(a)
    return agents


def agent_text(agent: aios.Agent) -> str:
    return "\n".join(t["text"] for t in getattr(agent, "transcript", []))


def run_kernel(
    bench: Bench,
    agents: list[aios.Agent],
    scheduler: str,
    batch: int,
    order: list[int] | None = None,
    stagger: float = 0.0,
    quantum: int | None = None,
) -> dict[str, Any]:
    """All agents at once (or staggered in ``order``); per-agent waiting/turnaround and outputs."""
    k = bench.kernel(scheduler, batch, quantum)
    try:
        if order is None:
            t0 = time.time()
            runs = aios.run_all(k, [(a, None) for a in agents])
            arrivals = {r.agent: r.started_at for r in runs}
        else:
            runs_by: dict[str, aios.AgentRun] = {}
            threads = []
            t0 = time.time()
            for slot, idx in enumerate(order):
                a = agents[idx]

                def go(a=a, delay=slot * stagger):
                    time.sleep(max(0.0, t0 + delay - time.time()))
                    runs_by[a.name] = a.start(k)

                th = threading.Thread(target=go)
                th.start()
                threads.append(th)
            for th in threads:
                th.join()
            runs = [runs_by[a.name] for a in agents]
            arrivals = {r.agent: r.started_at for r in runs}
        wall = time.time() - t0
        failed = [r for r in runs if not r.ok]
        if failed:
            raise RuntimeError(f"agent {failed[0].agent} failed: {failed[0].error}")
        out = {
            "wall": wall,
            "agents": {
                r.agent: {
                    "waiting": r.waiting_time,
                    "turnaround": r.finished_at - arrivals[r.agent],
                    "tokens": sum(s.get("completion_tokens", 0) for s in r.syscalls if s["kind"] == "llm"),
                    "preemptions": sum(s.get("preemptions", 0) for s in r.syscalls if s["kind"] == "llm"),
                }
                for r in runs
            },
            "texts": {a.name: agent_text(a) for a in agents},
            "requests": {
                a.name: [
                    {"messages": k.llm._message_dicts(s.request), "max_new_tokens": s.request.max_new_tokens}
                    for s in k.history(agent=a.name, kind="llm")
                ]
                for a in agents
            },
        }
    finally:
        k.shutdown()
    return out


def run_sequential(
    bench: Bench, requests: dict[str, list[dict]], order: list[str], stagger: float = 0.0
) -> dict[str, Any]:
    """No kernel: plain ``model.generate``, one agent after another in arrival order."""
    model, tok = bench.model, bench.tok

    def renderer(messages: list[dict]) -> list[int]:  # what LLMEngine.render does (no tools here)
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    eos = tok.eos_token_id
    t0 = time.time()
    agents: dict[str, dict[str, float]] = {}
    for slot, name in enumerate(order):
        arrival = t0 + slot * stagger
        time.sleep(max(0.0, arrival - time.time()))
        first_start = None
        tokens = 0
        for req in requests[name]:
            ids = torch.tensor([renderer(req["messages"])], device=model.device)
            if first_start is None:
                first_start = time.time()
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=req["max_new_tokens"],
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
                )
            tokens += out.shape[1] - ids.shape[1]
        agents[name] = {
            "waiting": first_start - arrival,
            "turnaround": time.time() - arrival,
            "tokens": tokens,
            "preemptions": 0,
        }
    return {"wall": time.time() - t0, "agents": agents}


def similarity(bench: Bench, a: str, b: str) -> tuple[float, float]:
    import sacrebleu

    if a == b:
        bleu = 1.0
    else:
        bleu = sacrebleu.sentence_bleu(a, [b]).score / 100.0
    if bench.embedder is None:
        return bleu, float(a == b)
    from aios.kernel.embedding import cosine

    va, vb = bench.embedder.embed([a, b])
    return bleu, min(1.0, cosine(va, vb))


# ---------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default="smollm2", help="'smollm2' (default), a model path, or 'tiny' (smoke test)"
    )
    ap.add_argument("--trials", type=int, default=5, help="trials for the 3-agent set")
    ap.add_argument("--mix-trials", type=int, default=1, help="trials for the 12-agent mix (1: time budget)")
    ap.add_argument("--batch", type=int, default=4, help="batch rows for the 3-agent runs")
    ap.add_argument("--mix-batch", type=int, default=2, help="batch rows for the 12-agent mix")
    ap.add_argument("--quantum", type=int, default=4, help="RR time slice (tokens)")
    ap.add_argument(
        "--scale",
        type=float,
        default=0.5,
        help="multiply the agents' token budgets (0.5: the 20-minute budget)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0 = auto: 1 when the machine is already busy (load average >= cores: "
        "two OpenMP threads spinning against other processes run ~10x slower), else torch's default",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    elif load >= (os.cpu_count() or 1):
        torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    bench = Bench(args)
    print(
        f"model {args.model} loaded in {bench.load_s:.1f}s; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    names = list(PAPER_AGENTS)
    results: dict[str, Any] = {
        "config": {
            **vars(args),
            "mix_lengths": MIX_LENGTHS,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load,
        },
    }

    # -- 1. solo references ----------------------------------------------------------------------
    solo: dict[str, Any] = {}
    for name in names:
        agent = next(a for a in paper_agents(args.scale) if a.name == name)
        r = run_kernel(bench, [agent], "fifo", args.batch)
        solo[name] = {"text": r["texts"][name], "requests": r["requests"][name], **r["agents"][name]}
        print(
            f"solo {name}: {r['agents'][name]['tokens']} tokens, {r['agents'][name]['turnaround']:.1f}s",
            flush=True,
        )
    requests = {n: solo[n]["requests"] for n in names}

    # -- 2. three agents: sequential vs kernel, with consistency from every kernel run ----------
    timing: dict[str, list[dict]] = {"sequential": [], **{p: [] for p in POLICIES}}
    consistency: dict[str, dict[str, list[tuple[float, float]]]] = {}
    configs = [(p, None) for p in POLICIES]
    for trial in range(args.trials):
        timing["sequential"].append(run_sequential(bench, requests, names))
        for policy, quantum in configs:
            r = run_kernel(bench, paper_agents(args.scale), policy, args.batch, quantum=quantum)
            timing[policy].append(r)
            for n in names:
                consistency.setdefault(policy, {}).setdefault(n, []).append(
                    similarity(bench, r["texts"][n], solo[n]["text"])
                )
        print(f"3-agent trial {trial + 1}/{args.trials} done ({time.time() - t_start:.0f}s)", flush=True)
    # stress: RR with a tiny quantum and three filler agents, so rows are short and requests are
    # suspended and resumed many times; the paper agents must still match their solo outputs
    fillers = [ChatAgent(f"filler{i}", tokens=48, scale=args.scale) for i in range(3)]
    stress = run_kernel(bench, paper_agents(args.scale) + fillers, "rr", args.batch, quantum=2)
    for n in names:
        consistency.setdefault("rr (quantum 2)", {}).setdefault(n, []).append(
            similarity(bench, stress["texts"][n], solo[n]["text"])
        )
    stress_preempt = sum(stress["agents"][n]["preemptions"] for n in names)

    # -- 3. the 12-agent mix -----------------------------------------------------------------------
    mix = mix_agents(args.scale)
    mix_names = [a.name for a in mix]
    ref = run_kernel(bench, mix_agents(args.scale), "fifo", max(args.batch, 4))  # records the requests
    mix_requests = ref["requests"]
    mix_timing: dict[str, list[dict]] = {"sequential": [], **{p: [] for p in POLICIES}}
    stagger = 0.02
    for trial in range(args.mix_trials):
        order = list(range(len(mix)))
        random.Random(trial).shuffle(order)
        mix_timing["sequential"].append(
            run_sequential(bench, mix_requests, [mix_names[i] for i in order], stagger)
        )
        for policy in POLICIES:
            mix_timing[policy].append(
                run_kernel(bench, mix_agents(args.scale), policy, args.mix_batch, order, stagger)
            )
        print(f"mix trial {trial + 1}/{args.mix_trials} done ({time.time() - t_start:.0f}s)", flush=True)

    # -- 4. tables -----------------------------------------------------------------------------------
    def avg(runs: list[dict], agent: str, key: str) -> float:
        return statistics.mean(r["agents"][agent][key] for r in runs)

    md: list[str] = [f"# AIOS evaluation on {args.model} (CPU, {torch.get_num_threads()} threads)\n"]
    md.append(
        f"Kernel runs: {args.batch} batch rows for the 3-agent set, {args.mix_batch} for the 12-agent mix; "
        f"RR quantum {args.quantum} tokens; batch-invariant decode; temperature 0; token budgets x{args.scale}. "
        f"3-agent set: {args.trials} trials; 12-agent mix: {args.mix_trials} trials. "
        f"Load average at start: {load:.1f} on {os.cpu_count()} cores; torch threads {torch.get_num_threads()}.\n"
    )
    md.append("## Consistency: concurrent vs solo outputs (BLEU / MiniLM cosine, mean over trials)\n")
    rows = []
    all_bleu = []
    for policy, per in consistency.items():
        row = [policy]
        for n in names:
            b = statistics.mean(x[0] for x in per[n])
            c = statistics.mean(x[1] for x in per[n])
            all_bleu += [x[0] for x in per[n]]
            row.append(f"{b:.3f} / {c:.3f}")
        rows.append(row)
    md.append(format_table(["policy", *names], rows))
    md.append(
        f"\nStress run (RR quantum 2, the three agents plus three 48-token fillers on {args.batch} rows): "
        f"{stress_preempt} suspensions of the paper agents' requests.\n"
    )

    md.append("## Three paper agents: waiting / turnaround (s), mean over trials\n")
    order3 = ["sequential", *POLICIES]
    rows = []
    for n in names:
        row = [n]
        for mode in order3:
            row.append(f"{avg(timing[mode], n, 'waiting'):.2f} / {avg(timing[mode], n, 'turnaround'):.2f}")
        rows.append(row)
    md.append(format_table(["agent", *order3], rows))
    last = names[-1]
    seq_last = avg(timing["sequential"], last, "turnaround")
    ratios_last = {p: avg(timing[p], last, "turnaround") / seq_last for p in POLICIES}
    rr_wait = {n: (avg(timing["rr"], n, "waiting"), avg(timing["fifo"], n, "waiting")) for n in names}

    md.append("\n## 12-agent mix (heavy-tailed lengths): turnaround (s)\n")
    rows = []
    mix_stats: dict[str, dict[str, float]] = {}
    for mode in ["sequential", *POLICIES]:
        ta = [a["turnaround"] for r in mix_timing[mode] for a in r["agents"].values()]
        wa = [a["waiting"] for r in mix_timing[mode] for a in r["agents"].values()]
        mix_stats[mode] = {
            "mean_turnaround": statistics.mean(ta),
            "p90_turnaround": pct(ta, 90),
            "p99_turnaround": pct(ta, 99),
            "mean_waiting": statistics.mean(wa),
            "p90_waiting": pct(wa, 90),
            "p99_waiting": pct(wa, 99),
            "makespan": statistics.mean(r["wall"] for r in mix_timing[mode]),
        }
        s = mix_stats[mode]
        rows.append(
            [
                mode,
                s["mean_waiting"],
                s["p90_waiting"],
                s["p99_waiting"],
                s["mean_turnaround"],
                s["p90_turnaround"],
                s["p99_turnaround"],
                s["makespan"],
            ]
        )
    md.append(
        format_table(
            ["mode", "wait mean", "wait p90", "wait p99", "turnaround mean", "p90", "p99", "makespan"], rows
        )
    )
    for n in mix_names:
        rr_wait[n] = (avg(mix_timing["rr"], n, "waiting"), avg(mix_timing["fifo"], n, "waiting"))

    sjf_vs_fifo = mix_stats["sjf"]["mean_turnaround"] / mix_stats["fifo"]["mean_turnaround"]
    worst_rr = max(rr_wait.items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1e-9) if kv[1][0] > 0.05 else 0)
    rr_ok = all(w <= 2 * f or w <= 0.05 for w, f in rr_wait.values())
    targets = {
        "bleu_all_1.0": all(b >= 0.9999 for b in all_bleu),
        "min_bleu": min(all_bleu),
        "last_agent_turnaround_ratio": ratios_last,
        "last_agent_target_met": all(v <= 0.5 for v in ratios_last.values()),
        "sjf_over_fifo_mean_turnaround_mix": sjf_vs_fifo,
        "sjf_target_met": sjf_vs_fifo <= 0.7,
        "rr_waiting_within_2x_fifo": rr_ok,
        "worst_rr_waiting": {"agent": worst_rr[0], "rr": worst_rr[1][0], "fifo": worst_rr[1][1]},
    }
    md.append("\n## Targets\n")
    md.append(
        format_table(
            ["target", "measured", "met"],
            [
                [
                    "BLEU = 1.0 for every agent under every policy",
                    f"min {min(all_bleu):.3f}",
                    targets["bleu_all_1.0"],
                ],
                [
                    f"last agent ({last}) turnaround, kernel / sequential <= 0.5",
                    ", ".join(f"{p} {v:.2f}" for p, v in ratios_last.items()),
                    targets["last_agent_target_met"],
                ],
                [
                    "SJF / FIFO mean turnaround on the mix <= 0.7",
                    f"{sjf_vs_fifo:.2f}",
                    targets["sjf_target_met"],
                ],
                [
                    "no agent's RR waiting > 2x its FIFO waiting (waits under 50 ms ignored)",
                    f"worst {worst_rr[0]}: {worst_rr[1][0]:.2f}s vs {worst_rr[1][1]:.2f}s",
                    rr_ok,
                ],
            ],
        )
    )
    total = time.time() - t_start
    md.append(f"\nWhole evaluation: {total / 60:.1f} min (model load {bench.load_s:.1f}s).\n")
    text = "\n".join(md)
    print("\n" + text)

    results.update(
        solo={n: {k: v for k, v in solo[n].items() if k != "requests"} for n in names},
        consistency={p: {n: v for n, v in per.items()} for p, per in consistency.items()},
        timing={m: [{"wall": r["wall"], "agents": r["agents"]} for r in runs] for m, runs in timing.items()},
        mix_timing={
            m: [{"wall": r["wall"], "agents": r["agents"]} for r in runs] for m, runs in mix_timing.items()
        },
        mix_stats=mix_stats,
        targets=targets,
        total_seconds=total,
    )
    stem = "aios_eval" if args.model == "smollm2" else f"aios_eval_{Path(args.model).name}"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"{stem}.md").write_text(text)
    plot(out_dir / f"{stem}.png", names, timing, mix_stats, args)
    print(f"wrote {out_dir / stem}.{{json,md,png}}")
    return 0


def plot(path: Path, names: list[str], timing: dict, mix_stats: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["sequential", *POLICIES]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        ta = [statistics.mean(r["agents"][n]["turnaround"] for r in timing[mode]) for n in names]
        wa = [statistics.mean(r["agents"][n]["waiting"] for r in timing[mode]) for n in names]
        xs = [j + i * width for j in range(len(names))]
        ax1.bar(xs, ta, width, label=mode)
        ax1.bar(xs, wa, width, color="black", alpha=0.25)
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax1.set_ylabel("seconds (dark: waiting, full bar: turnaround)")
    ax1.set_title("three paper agents")
    ax1.legend(fontsize=8)
    stats = ["mean_turnaround", "p90_turnaround", "p99_turnaround"]
    for i, mode in enumerate(modes):
        xs = [j + i * width for j in range(len(stats))]
        ax2.bar(xs, [mix_stats[mode][s] for s in stats], width, label=mode)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(stats))], ["mean", "p90", "p99"])
    ax2.set_ylabel("turnaround (s)")
    ax2.set_title("12-agent mix, heavy-tailed lengths")
    fig.suptitle(
        f"AIOS evaluation: {args.model}; rows {args.batch} (3 agents) / {args.mix_batch} (mix); RR quantum {args.quantum}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
