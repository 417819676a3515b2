"""Throughput: N concurrent agents x 64 new tokens on SmolLM2 (CPU), four systems side by side.

- ``sequential``: ``model.generate`` per request, one after another (what a naive agent framework does);
- ``generate_batch``: transformers' own continuous batching (``model.generate_batch``);
- ``kernel_fifo`` / ``kernel_rr``: the aios kernel (LLMEngine, batch-invariant decode, max_batch_size 8;
  RR with quantum 8 suspends and restores KV snapshots whenever more agents than rows wait).

All greedy, each request stops at EOS or 64 new tokens; aggregate tokens/s = generated tokens / wall time.
Writes ``results/throughput.json`` and ``results/throughput.png``.

    python benchmarks/bench_throughput.py [--agents 1,4,8,16] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, story_messages, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="1,4,8,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads for all systems (0: torch's default); 1 is robust on a shared machine"
    )
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--seq-max", type=int, default=4, help="requests timed for the sequential baseline")
    ap.add_argument("--systems", default="sequential,generate_batch,kernel_fifo,kernel_rr")
    args = ap.parse_args()

    import torch
    from transformers import GenerationConfig

    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig
    from aios.kernel.llm import load_model
    from aios.kernel.syscall import LLMRequest, LLMSyscall

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    agents = [int(x) for x in args.agents.split(",")]
    systems = args.systems.split(",")
    n_new = args.new_tokens

    base, tok = load_model("smollm2", "cpu")  # plain model (sdpa) for the baselines
    kmodel, _ = load_model("smollm2", "cpu")  # the kernel's model (the engine fuses its q/k/v and gate/up weights)

    def prompt_ids(i: int) -> list[int]:
        text = tok.apply_chat_template(story_messages(i), add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    gen_cfg = GenerationConfig(
        max_new_tokens=n_new, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )

    def run_sequential(n: int) -> tuple[int, float]:
        # one request after another: the aggregate rate does not depend on n, so at most
        # --seq-max requests are timed (the JSON records how many)
        total, t0 = 0, time.perf_counter()
        for i in range(min(n, args.seq_max)):
            ids = torch.tensor([prompt_ids(i)])
            with torch.inference_mode():
                out = base.generate(ids, generation_config=gen_cfg)
            total += out.shape[1] - ids.shape[1]
        return total, time.perf_counter() - t0

    def run_generate_batch(n: int) -> tuple[int, float]:
        inputs = [prompt_ids(i) for i in range(n)]
        t0 = time.perf_counter()
        out = base.generate_batch(inputs=inputs, generation_config=gen_cfg)
        dt = time.perf_counter() - t0
        return sum(len(v.generated_tokens) for v in out.values()), dt

    def run_kernel(n: int, policy: str) -> tuple[int, float, dict]:
        cfg = KernelConfig(model="smollm2", scheduler=policy, quantum=8, max_batch_size=args.max_batch_size)
        engine = LLMEngine(kmodel, tok, cfg)
        with Kernel(cfg, llm=engine) as kernel:
            def cred(name):
                return kernel.credential_for(name, by=kernel.owner)

            warm = kernel.submit(LLMSyscall(request=LLMRequest(messages=story_messages(0), max_new_tokens=2)), cred("warm"))
            warm.wait(600)
            engine._stats.__init__()  # measure the run only
            t0 = time.perf_counter()
            calls = [
                kernel.submit(
                    LLMSyscall(request=LLMRequest(messages=story_messages(i), max_new_tokens=n_new)), cred(f"agent{i}")
                )
                for i in range(n)
            ]
            results = [c.wait(1800) for c in calls]
            dt = time.perf_counter() - t0
            st = engine.stats()
            extra = {
                "rows_per_decode_step": st["rows_per_decode_step"],
                "preemptions": sum(r.preemptions for r in results),
                "mean_waiting_s": sum(c.waiting_time for c in calls) / n,
                "mean_turnaround_s": sum(c.turnaround_time for c in calls) / n,
            }
        return sum(r.completion_tokens for r in results), dt, extra

    # warm-ups (first-call costs are not throughput)
    with torch.inference_mode():
        base.generate(torch.tensor([prompt_ids(0)]), generation_config=GenerationConfig(max_new_tokens=2, do_sample=False))
    if "generate_batch" in systems:
        base.generate_batch(inputs=[prompt_ids(0)], generation_config=GenerationConfig(max_new_tokens=2, do_sample=False))

    rows = []
    for n in agents:
        for system in systems:
            extra: dict = {}
            if system == "sequential":
                tokens, dt = run_sequential(n)
            elif system == "generate_batch":
                tokens, dt = run_generate_batch(n)
            else:
                tokens, dt, extra = run_kernel(n, system.removeprefix("kernel_"))
            row = {"agents": n, "system": system, "tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt, **extra}
            if system == "sequential":
                row["requests_timed"] = min(n, args.seq_max)
            rows.append(row)
            print(f"  {system:15s} agents={n:2d} tokens={tokens:5d} {dt:7.1f}s {tokens / dt:7.1f} tok/s", flush=True)

    by = {(r["agents"], r["system"]): r["tok_per_s"] for r in rows}
    summary = {}
    for n in agents:
        for k in ("kernel_fifo", "kernel_rr"):
            if (n, k) in by and (n, "sequential") in by:
                summary[f"{k}_vs_sequential_at_{n}"] = by[(n, k)] / by[(n, "sequential")]
            if (n, k) in by and (n, "generate_batch") in by:
                summary[f"{k}_vs_generate_batch_at_{n}"] = by[(n, k)] / max(by[(n, "generate_batch")], 1e-9)
    targets = {
        "kernel_at_8_vs_sequential>=3": min(summary.get("kernel_fifo_vs_sequential_at_8", 0), summary.get("kernel_rr_vs_sequential_at_8", 0)) >= 3,
        "kernel_at_8_vs_generate_batch>=1": min(summary.get("kernel_fifo_vs_generate_batch_at_8", 0), summary.get("kernel_rr_vs_generate_batch_at_8", 0)) >= 1,
    }
    data = {
        "benchmark": "throughput",
        "model": "SmolLM2-135M-Instruct (embedded, fp32, CPU)",
        "new_tokens": n_new,
        "max_batch_size": args.max_batch_size,
        "machine": machine_info(threads),
        "rows": rows,
        "ratios": summary,
        "targets_met": targets,
    }
    path = write_json("throughput", data)
    print()
    print(table(rows, ["agents", "system", "tokens", "seconds", "tok_per_s", "rows_per_decode_step", "preemptions"]))
    print()
    for k, v in summary.items():
        print(f"{k}: {v:.2f}x")
    print("targets:", targets)
    print("wrote", path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for system in systems:
            xs = [n for n in agents if (n, system) in by]
            ax.plot(xs, [by[(n, system)] for n in xs], marker="o", label=system)
        ax.set_xlabel("concurrent agents")
        ax.set_ylabel("aggregate tokens/s")
        ax.set_title(f"SmolLM2-135M on CPU ({threads} threads), {n_new} new tokens each")
        ax.set_xticks(agents)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "throughput.png", dpi=120)
    except Exception as exc:  # plotting is a convenience
        print("plot skipped:", exc)


if __name__ == "__main__":
    main()
