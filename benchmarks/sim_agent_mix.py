"""The multi-turn agent mixes on a simulated clock: the real ``Scheduler`` and policies, a model of the step cost.

    python benchmarks/sim_agent_mix.py            # ~15 s, deterministic; writes results/agent_mix_sim.md

Why: ``bench_agent_serving.py`` runs its mixes on SmolLM2 (minutes per configuration, noisy on a
shared 2-core machine), so it cannot say how far a scheduling policy *could* go on a mix. This
replays the same agents (``MIXES``, light- and heavy-tailed: documents, calls, reply tokens; tool
latency between calls; arrivals ``stagger`` apart in the benchmark's seeded orders; one after
another, or together on 2 rows) through ``aios.kernel.scheduler`` itself, with a step that costs
a constant (the engine is batch-invariant: every decode step runs all rows) plus a cost per
prefilled token, both fitted to measured FIFO runs of the light mix, one quiet and one on a
loaded machine (``COSTS``). It adds two clairvoyant references no real policy can have: SRPT on
the agent's remaining tokens (all its calls) and on the call's remaining tokens; they show what
knowing every length is worth on a mix. Suspending and resuming cost nothing here (measured:
0.1 s of engine time over 25 preemptions in a 32 s run).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agent_serving import MIXES, POLICIES  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from aios.cli import format_table  # noqa: E402
from aios.kernel.scheduler import LeastAttainedService, Policy, Scheduler, make_policy  # noqa: E402
from aios.kernel.sequence import SeqStatus, Sequence  # noqa: E402
from aios.kernel.syscall import LLMRequest, LLMSyscall  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (one decode step, any number of rows; per prefilled token), fitted to the measured FIFO runs of SmolLM2:
COSTS = {
    "quiet": (0.13, 0.0043),  # 2 torch threads, load average 1.0 (the last full run)
    "loaded": (0.19, 0.0027),  # 1 torch thread, load average 2.7 (a quick run on the shared machine)
    # today's engine (blocked-key attention, coded panels, 2-row rebuild; 2026-12-03, AVX2 EPYC, load
    # 0.9): fitted to the heavy mix's FIFO and LAS + reuse runs (171 steps, 4941 prefilled tokens, 9.50 s
    # busy; 201 steps, 1399 tokens, 5.01 s). Decode got 9x cheaper and prefill 3x: prefill is now most of
    # FIFO's time, so reuse is worth more and the order less
    "today": (0.0152, 0.0014),
}
CHAT_TOKENS, TURN_TOKENS = 40, 20  # chat template + instructions; a tool-result turn
READING = {
    "light": (
        "Reading it: the quiet model reproduces the quiet measured run (FIFO +reuse 0.69; preemptions RR 9, "
        "SJF 6-7, priority 80-99; LAS as it was before its same-level preemption and call-arrival ties "
        "were fixed: 0.64 with 23 preemptions, measured 0.65 with 23-27); the loaded one is within 0.06 of "
        "the loaded quick run (orders 0-1, measured: RR 0.70, SJF 0.54, LAS 0.70). SJF equals clairvoyant call SRPT "
        "here because each call's max_new_tokens is exactly its length. No ordering gets much below "
        "0.5x (quiet) or 0.56x (loaded), so 'LAS + reuse <= 0.5x FIFO' asks a policy without length hints for the "
        "clairvoyant optimum; LAS's first level (q) and its prefill weight move it by a few "
        "hundredths. Per-call accounting (classic LAS, each call its own task) does 0.04-0.07 better here, "
        "because this mix's many-call agents are not its long ones; it is not the program-level policy "
        "the issue asks for."
    ),
    "heavy": (
        "Reading it: the heavy-tailed mix has the light mix's agent count, rows and mean work per call, spread "
        "15x instead of 8x (its distribution was fixed before any of this was computed: "
        "`bench_agent_serving.py`'s docstring). Knowing every length is worth more here (clairvoyant agent SRPT "
        "+ reuse 0.43x quiet, 0.50x loaded, against 0.49x and 0.56x on the light mix), and LAS gains with it "
        "(0.55x and 0.63x, against 0.61x and 0.71x), but in this model it stays above 0.5x, a little below RR (0.57x) and well above the "
        "clairvoyant references: 8 agents arriving within 1.6 s on 2 rows are one batch, and a policy that "
        "knows no lengths must serve every agent a little before the short ones can be told from the long "
        "ones. Per-call LAS (each call its own task, not the program-level policy the issue asks for) gets "
        "0.49x; one-after-another is the worst mode here as on the light mix. Cross-check: a one-trial quick "
        "run on SmolLM2 (order 0; fifo, fifo/sjf/las + reuse; 2026-12-02 07:45 UTC, load 1.6, 2 threads) "
        "measured FIFO + reuse 0.70x, SJF + reuse 0.59x, LAS + reuse 0.78x. FIFO without reuse ran faster "
        "than both fits (mean turnaround 19.7 s against 26.2 s modelled: prefill about 2.3 ms a token on "
        "today's engine against the 4.3 ms fitted); refitted to that run (step 0.125 s, 2.3 ms), the model "
        "gives 0.76x, 0.52x and 0.61x for that order: FIFO and SJF within 0.07, LAS 0.17 worse measured than "
        "modelled, not explained yet (the shortest agent waited 6.7 s under LAS against 2.4 s under FIFO + reuse). "
        "Today's fit (2026-12-03: decode steps ~10 ms, prefill 1.4 ms a token): FIFO without reuse is mostly "
        "prefill, so reuse alone brings FIFO to 0.47x and every preemptive policy with reuse lands at "
        "0.43-0.46x; the benchmark run of that day measured LAS + reuse 0.48x, RR + reuse 0.48x, FIFO + reuse "
        "0.49x and SJF + reuse 0.45x (`agent_serving.md`). The order now moves the result by a few hundredths; "
        "the ~0.02-0.03 between model and measurement is engine time the model leaves out (the agents' own "
        "threads, switching, idle steps)."
    ),
}


class AgentSRPT(Policy):
    """Clairvoyant: the call of the agent with the fewest tokens left over all its calls first."""

    name = "srpt-agent"
    preemptive = True

    def key(self, seq: Sequence, now: float) -> tuple:
        return (seq.later_tokens + seq.max_new_tokens - seq.tokens_generated, seq.arrival, seq.seq_id)


class CallSRPT(Policy):
    """Clairvoyant: the call with the fewest tokens left first (SJF with exact lengths)."""

    name = "srpt-call"
    preemptive = True

    def key(self, seq: Sequence, now: float) -> tuple:
        return (seq.max_new_tokens - seq.tokens_generated, seq.arrival, seq.seq_id)


class CallLAS(LeastAttainedService):
    """Least attained service per call (each call its own task): the classic, not program-level, form."""

    @staticmethod
    def task(seq: Sequence) -> tuple[str, str]:
        return (seq.agent, f"call{seq.seq_id}")


def simulate(mix: list[tuple[int, int, int]], policy: Policy, reuse: bool, order: list[int],
             costs: tuple[float, float] = COSTS["quiet"], rows: int = 2, stagger: float = 0.2,
             tool_s: float = 0.3, sequential: bool = False) -> dict:  # fmt: skip
    """Run ``mix`` to completion; mean agent turnaround, makespan and preemptions. ``sequential``:
    one agent at a time in arrival order (the benchmark's one-after-another)."""
    sched = Scheduler(policy, rows, 4096)
    agents = {
        i: {
            "arrival": slot * stagger,
            "next": slot * stagger,
            "call": 0,
            "seq": None,
            "done": None,
            "slot": slot,
        }
        for slot, i in enumerate(order)
    }
    step_s, prefill_s = costs
    now, preemptions, seq_ids = 0.0, 0, itertools.count()
    while any(a["done"] is None for a in agents.values()):
        idle = [i for i, a in agents.items() if a["seq"] is None and a["done"] is None]
        if sequential:  # one after another: an agent starts when every earlier arrival is done
            first = min(a["slot"] for a in agents.values() if a["done"] is None)
            idle = [i for i in idle if agents[i]["slot"] == first]
        for i in idle:
            a = agents[i]
            if a["next"] <= now:
                doc, calls, reply = mix[i]
                prompt = doc + CHAT_TOKENS + a["call"] * (reply + TURN_TOKENS)
                sc = LLMSyscall(agent=f"a{i}", request=LLMRequest(
                    messages=[{"role": "user", "content": "-"}], max_new_tokens=reply, priority=i % 3 - 1))  # fmt: skip
                seq = Sequence(
                    syscall=sc,
                    prompt_ids=[0] * prompt,
                    max_new_tokens=reply,
                    arrival=now,
                    seq_id=next(seq_ids),
                )  # in the order they arrive, as the engine numbers them
                seq.prefix_reused = prompt - TURN_TOKENS if reuse and a["call"] else 0
                seq.later_tokens = (calls - a["call"] - 1) * reply  # only the clairvoyant references read it
                a["seq"] = seq
                sched.add(seq, now)
        if not sched.has_work():
            now = min(agents[i]["next"] for i in idle)
            continue
        plan = sched.schedule(now)
        for s in plan.suspend:
            s.status = SeqStatus.SUSPENDED
        preemptions += len(plan.suspend)
        for s in plan.resume + plan.admit:
            s.status = SeqStatus.RUNNING
        now += step_s + prefill_s * sum(len(s.prompt_ids) - s.prefix_reused for s in plan.admit)
        for s in list(sched.running):
            if s in plan.admit:
                s.prefill_computed = len(s.prompt_ids) - s.prefix_reused
            s.output_ids[0].append(1)
            s.quantum_used += 1
            if s.tokens_generated >= s.max_new_tokens:
                sched.finished(s)
                a = agents[int(s.agent[1:])]
                a["seq"], a["call"] = None, a["call"] + 1
                if a["call"] >= mix[int(s.agent[1:])][1]:
                    a["done"] = now
                else:
                    a["next"] = now + tool_s
    return {
        "turnaround": statistics.mean(a["done"] - a["arrival"] for a in agents.values()),
        "makespan": now,
        "preemptions": preemptions,
    }


def configs() -> list[tuple[str, Callable[[], Policy], bool, bool]]:
    """(label, policy factory, reuse, one-after-another): the benchmark's modes, then variants and references."""
    out = [
        (f"sequential{' +reuse' if r else ''}", lambda: make_policy("fifo"), r, True) for r in (False, True)
    ]
    out += [(f"{p}{' +reuse' if r else ''}", lambda p=p: make_policy(p), r, False) for p in POLICIES for r in (False, True)]  # fmt: skip
    out += [
        (f"las q={q} +reuse", lambda q=q: LeastAttainedService(quantum=q), True, False) for q in (16, 32, 64)
    ]
    out += [
        ("las prefill x0.066 +reuse", lambda: LeastAttainedService(prefill_weight=0.066), True, False),
        ("call-level las +reuse", lambda: CallLAS(), True, False),
        ("clairvoyant call SRPT +reuse", lambda: CallSRPT(), True, False),
        ("clairvoyant agent SRPT +reuse", lambda: AgentSRPT(), True, False),
    ]
    return out


def mix_table(mix: list[tuple[int, int, int]], n_orders: int) -> tuple[str, dict[str, dict[str, float]]]:
    """The table of one mix, and per cost fit its ratios to FIFO without reuse over all orders."""
    orders = []
    for seed in range(n_orders):  # the benchmark's trial orders
        order = list(range(len(mix)))
        random.Random(seed).shuffle(order)
        orders.append(order)
    runs: dict[tuple[str, str], list[dict]] = {}
    for label, make, reuse, seq in configs():
        for cost, c in COSTS.items():
            runs[label, cost] = [simulate(mix, make(), reuse, o, c, sequential=seq) for o in orders]

    def mean_ta(label: str, cost: str, k: int) -> float:
        return statistics.mean(r["turnaround"] for r in runs[label, cost][:k])

    rows, fits = [], {cost: {} for cost in COSTS}
    for label, _, reuse, _ in configs():
        row: list = [label]
        for cost in COSTS:
            fits[cost][label] = mean_ta(label, cost, n_orders) / mean_ta("fifo", cost, n_orders)
            row += [fits[cost][label], mean_ta(label, cost, 2) / mean_ta("fifo", cost, 2)]
            if cost == "quiet":
                row.append(
                    mean_ta(label, cost, n_orders) / mean_ta("sequential" + " +reuse" * reuse, cost, n_orders)
                )
        row.append(statistics.mean(r["preemptions"] for r in runs[label, "quiet"]))
        rows.append(row)
    head = ["mode"]
    for cost in COSTS:
        head += [f"{cost}: / FIFO", "orders 0-1"] + (["/ sequential"] if cost == "quiet" else [])
    head.append("preemptions")
    return format_table(head, rows), fits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=12, help="arrival orders (the benchmark's trial seeds)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    costs = "; ".join(
        f"{k}: step {a} s + {b * 1000:.1f} ms per prefilled token" for k, (a, b) in COSTS.items()
    )
    text = [
        "# The multi-turn agent mixes, simulated (real scheduler, modelled step cost)\n",
        f"`python benchmarks/sim_agent_mix.py`: mean agent turnaround / FIFO without reuse over {args.orders} "
        "arrival orders, and over orders 0-1 (the benchmark's two trials); '/ sequential': over one-after-another "
        "with the same reuse (quiet fit, all orders); 2 rows; costs fitted to measured FIFO runs "
        f"({costs}); preemptions: quiet fit, mean per run. Deterministic.\n",
    ]
    for name, mix in MIXES.items():
        table, fits = mix_table(mix, args.orders)
        quiet, today = fits["quiet"], fits["today"]
        worst = max((quiet[k] / quiet["sequential" + " +reuse" * k.endswith("+reuse")], k) for k in quiet
                    if not k.startswith(("sequential", "clairvoyant", "call-level", "las q", "las prefill")))  # fmt: skip
        text += [
            f"\n## {name} mix: {mix} (documents, calls, reply tokens)\n",
            table,
            f"\nQuiet fit, all orders: LAS + reuse {quiet['las +reuse']:.2f}x FIFO without reuse; clairvoyant "
            f"agent SRPT + reuse (what knowing every length buys) {quiet['clairvoyant agent SRPT +reuse']:.2f}x, "
            f"clairvoyant call SRPT {quiet['clairvoyant call SRPT +reuse']:.2f}x; worst benchmark policy against "
            f"one-after-another: {worst[1]} {worst[0]:.2f}x. Today's fit: LAS + reuse {today['las +reuse']:.2f}x, "
            f"clairvoyant agent SRPT + reuse {today['clairvoyant agent SRPT +reuse']:.2f}x, RR + reuse "
            f"{today['rr +reuse']:.2f}x.\n",
            READING[name],
        ]
    out = "\n".join(text)
    print(out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "agent_mix_sim.md").write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
