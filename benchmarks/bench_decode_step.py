"""Where one decode step's time goes (issue #12, single-stream latency): the runner's forward at 1 and
8 rows, split into the weight matmuls (``Linear``) and everything else (norms, rotary, KV cache
writes and gathers, attention, residual adds: ~60 small eager ops per layer).

Why CPU time at 1 thread as well as wall time at the benchmark's threads: on a shared 2-core machine
a 2-thread step's wall time swings by several times with the load (each op's thread team waits for
a descheduled thread), while one thread's CPU time per step moves by a few percent. The wall figures
are the ones to quote on a quiet machine; the CPU figures compare changes on a busy one. Each figure
is a minimum (CPU) or median (wall) over the steps after a warm-up; the load average at start and end
is in the JSON.

``weight_mb`` is what a step must read from memory at any row count (the weights as the matmuls store
them: fp32, bf16 or coded panels; q/k/v and gate/up fused); ``floor_ms`` divides it by
``--bandwidth`` GB/s, a streaming read measured here with ``torch.sum`` on a 113 MB tensor (8-11 GB/s, 1-2 threads, on this machine).

    python benchmarks/bench_decode_step.py                    # SmolLM2, rows 1 and 8
    python benchmarks/bench_decode_step.py --model tiny       # checks it runs (figures mean nothing)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
from _common import load_bench_model, machine_info, write_json

from aios.kernel.model_runner import Chunk, ModelRunner


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _times(fn, n: int) -> tuple[list[float], list[float]]:
    cpu, wall = [], []
    for _ in range(n):
        c0, w0 = _cpu(), time.perf_counter()
        fn()
        cpu.append(_cpu() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu[2:], wall[2:]


@torch.inference_mode()
def measure(runner: ModelRunner, rows: int, threads: int, steps: int) -> dict:
    slots = runner.alloc(rows)
    hidden = runner.layers[0].qkv.shape[1]
    x = torch.randn(rows, hidden, dtype=runner.dtype, device=runner.device)
    pos = iter(range(40, 10**6))

    def step():
        p = next(pos)
        runner.run([Chunk(s, [5 + i], p) for i, s in enumerate(slots)]).argmax(-1).tolist()

    def linears():
        for layer in runner.layers:
            layer.qkv(x)
            layer.o(x)
            layer.down(layer.gate_up(x)[:, : layer.down.shape[1]])
        runner.lm_head(x).argmax(-1).tolist()

    out = {"rows": rows}
    for n_threads, tag in ((1, "cpu1"), (threads, f"wall{threads}")):
        torch.set_num_threads(n_threads)
        for name, fn in (("step", step), ("linears", linears)):
            cpu, wall = _times(fn, steps)
            out[f"{name}_{tag}_ms"] = 1000 * (min(cpu) if tag == "cpu1" else statistics.median(wall))
    out["other_cpu1_ms"] = out["step_cpu1_ms"] - out["linears_cpu1_ms"]
    runner.release(slots)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--bandwidth", type=float, default=10.0, help="GB/s for the weight-streaming floor")
    ap.add_argument("--out", default="decode_step")
    args = ap.parse_args()
    model, _ = load_bench_model(args.model)
    runner = ModelRunner(model, max(int(r) for r in args.rows.split(",")))
    lins = [lin for layer in runner.layers for lin in layer.linears()] + [runner.lm_head]
    # what a step reads: the C++ panels as stored (fp32, bf16 or coded: 0.75 / 1.25 byte per weight), else the weights
    weight_mb = sum((lin.weight if lin.panels is None else lin.panels).nbytes for lin in lins) / 1e6
    data = {"machine": machine_info(args.threads), "model": args.model, "dtype": str(runner.dtype),
            "weight_mb": weight_mb, "floor_ms": weight_mb / args.bandwidth, "bandwidth_gb_s": args.bandwidth,
            "rows": [measure(runner, int(r), args.threads, args.steps) for r in args.rows.split(",")],
            "loadavg_at_end": os.getloadavg()}  # fmt: skip
    for r in data["rows"]:
        print({k: round(v, 1) for k, v in r.items()})
    print(f"weights {weight_mb:.0f} MB per step: {data['floor_ms']:.0f} ms at {args.bandwidth} GB/s")
    print(f"wrote {write_json(args.out, data)}")


if __name__ == "__main__":
    main()
