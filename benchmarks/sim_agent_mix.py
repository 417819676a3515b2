"""The multi-turn agent mix on a simulated clock: the real ``Scheduler`` and policies, a model of the step cost.

    python benchmarks/sim_agent_mix.py            # ~15 s, deterministic; writes results/agent_mix_sim.md

Why: ``bench_agent_serving.py`` runs the mix on SmolLM2 (minutes per configuration, noisy on a
shared 2-core machine), so it cannot say how far a scheduling policy *could* go on that mix. This
replays the same agents (``MIX``: documents, calls, reply tokens; tool latency between calls;
arrivals ``stagger`` apart in the benchmark's seeded orders) through ``aios.kernel.scheduler``
itself, with a step that costs a constant (the engine is batch-invariant: every decode step runs
all rows) plus a cost per prefilled token, both fitted to measured FIFO runs, one quiet and one on
a loaded machine (``COSTS``). It adds two clairvoyant references no real policy can have:
SRPT on the agent's remaining tokens (all its calls) and on the call's remaining tokens; they
bound what any ordering reaches on this mix. Suspending and resuming cost nothing here (measured:
0.1 s of engine time over 25 preemptions in a 32 s run).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agent_serving import MIX  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from aios.cli import format_table  # noqa: E402
from aios.kernel.scheduler import LeastAttainedService, Policy, Scheduler, make_policy  # noqa: E402
from aios.kernel.sequence import SeqStatus, Sequence  # noqa: E402
from aios.kernel.syscall import LLMRequest, LLMSyscall  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (one decode step, any number of rows; per prefilled token), fitted to the measured FIFO runs of SmolLM2:
COSTS = {
    "quiet": (0.13, 0.0043),  # 2 torch threads, load average 1.0 (the last full run)
    "loaded": (0.19, 0.0027),  # 1 torch thread, load average 2.7 (a quick run on the shared machine)
}
CHAT_TOKENS, TURN_TOKENS = 40, 20  # chat template + instructions; a tool-result turn


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


def simulate(policy: Policy, reuse: bool, order: list[int], costs: tuple[float, float] = COSTS["quiet"],
             rows: int = 2, stagger: float = 0.2, tool_s: float = 0.3) -> dict:  # fmt: skip
    """Run the mix to completion; per-agent turnaround, makespan and preemptions."""
    sched = Scheduler(policy, rows, 4096)
    agents = {
        i: {"arrival": slot * stagger, "next": slot * stagger, "call": 0, "seq": None, "done": None}
        for slot, i in enumerate(order)
    }
    step_s, prefill_s = costs
    now, preemptions = 0.0, 0
    while any(a["done"] is None for a in agents.values()):
        for i, a in agents.items():
            if a["seq"] is None and a["done"] is None and a["next"] <= now:
                doc, calls, reply = MIX[i]
                prompt = doc + CHAT_TOKENS + a["call"] * (reply + TURN_TOKENS)
                sc = LLMSyscall(agent=f"a{i}", request=LLMRequest(
                    messages=[{"role": "user", "content": "-"}], max_new_tokens=reply, priority=i % 3 - 1))  # fmt: skip
                seq = Sequence(syscall=sc, prompt_ids=[0] * prompt, max_new_tokens=reply, arrival=now,
                               seq_id=i * 100 + a["call"])
                seq.prefix_reused = prompt - TURN_TOKENS if reuse and a["call"] else 0
                seq.later_tokens = (calls - a["call"] - 1) * reply  # only the clairvoyant references read it
                a["seq"] = seq
                sched.add(seq, now)
        if not sched.has_work():
            now = min(a["next"] for a in agents.values() if a["done"] is None and a["seq"] is None)
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
                if a["call"] >= MIX[int(s.agent[1:])][1]:
                    a["done"] = now
                else:
                    a["next"] = now + tool_s
    return {
        "turnaround": statistics.mean(a["done"] - a["arrival"] for a in agents.values()),
        "makespan": now,
        "preemptions": preemptions,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=12, help="arrival orders (the benchmark's trial seeds)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    configs: list[tuple[str, object, bool]] = [("fifo", lambda: make_policy("fifo"), False)]
    configs += [(f"{p} +reuse", lambda p=p: make_policy(p), True) for p in ("fifo", "rr", "priority", "sjf")]
    for q in (8, 16, 32, 64):
        configs.append((f"las q={q} +reuse", lambda q=q: LeastAttainedService(quantum=q), True))
    configs += [
        ("las prefill x0.066 +reuse", lambda: LeastAttainedService(prefill_weight=0.066), True),
        ("call-level las +reuse", lambda: CallLAS(), True),
        ("clairvoyant call SRPT +reuse", lambda: CallSRPT(), True),
        ("clairvoyant agent SRPT +reuse", lambda: AgentSRPT(), True),
    ]
    orders = []
    for seed in range(args.orders):
        order = list(range(len(MIX)))
        random.Random(seed).shuffle(order)
        orders.append(order)
    def ratio(make, reuse, costs, some) -> float:
        fifo = statistics.mean(simulate(make_policy("fifo"), False, o, costs)["turnaround"] for o in some)
        return statistics.mean(simulate(make(), reuse, o, costs)["turnaround"] for o in some) / fifo

    rows = []
    for label, make, reuse in configs:
        row: list = [label]
        for costs in COSTS.values():
            row += [ratio(make, reuse, costs, orders), ratio(make, reuse, costs, orders[:2])]
        row.append(statistics.mean(simulate(make(), reuse, o)["preemptions"] for o in orders))
        rows.append(row)
    head = ["mode", "quiet: / FIFO", "orders 0-1", "loaded: / FIFO", "orders 0-1", "preemptions"]
    table = format_table(head, rows)
    costs = "; ".join(f"{k}: step {a} s + {b * 1000:.1f} ms per prefilled token" for k, (a, b) in COSTS.items())
    text = (
        "# The multi-turn agent mix, simulated (real scheduler, modelled step cost)\n\n"
        f"`python benchmarks/sim_agent_mix.py`: mean agent turnaround / FIFO without reuse over {args.orders} "
        "arrival orders, and over orders 0-1 (the benchmark's two trials); 2 rows; costs fitted to two "
        f"measured runs ({costs}). Deterministic.\n\n{table}\n\n"
        "Reading it: the quiet model reproduces the quiet measured run (FIFO +reuse 0.69; preemptions RR 9, "
        "SJF 6-7, priority 80-99; LAS as it was before its same-level preemption and call-arrival ties "
        "were fixed: 0.64 with 23 preemptions, measured 0.65 with 23-27); the loaded one is within 0.06 of "
        "the loaded quick run (orders 0-1, measured: RR 0.70, SJF 0.54, LAS 0.70). SJF equals clairvoyant call SRPT "
        "here because each call's max_new_tokens is exactly its length. No ordering gets much below "
        "0.5x (quiet) or 0.56x (loaded), so 'LAS + reuse <= 0.5x FIFO' asks a policy without length hints for the clairvoyant "
        "optimum; LAS's first level (q) and its prefill weight move it by a few "
        "hundredths. Per-call accounting (classic LAS, each call its own task) does 0.04-0.07 better here, "
        "because this mix's many-call agents are not its long ones; it is not the program-level policy "
        "the issue asks for.\n"
    )
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "agent_mix_sim.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
