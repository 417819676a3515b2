"""Soak: many agents, mixed syscalls, minutes on end. Is the kernel flat, lossless and steady?

``python benchmarks/bench_soak.py [--agents 100] [--minutes 10] [--interval 5]``

One kernel on a tiny random model (the tests' 2-layer Llama, so the run measures the kernel, not a
model), hashing embedder. Each agent loops until the deadline over a fixed mix: a short chat
(greedy or sampled), memory add/search/delete, a storage put (a bounded set of keys, overwritten)
and get, a search every fifth round, a calculator tool call, a file write and read. The kernel keeps
``--history`` finished syscalls (default 2,000, so that bounded, by-design record is full during the
warm-up and what remains is growth that should not be there). A sampler records every ``--interval``
seconds: process RSS, open file descriptors, threads, syscalls finished
in the interval and their latency percentiles (measured by the callers), typed failures.

Reported (``benchmarks/results/soak.json`` and ``soak.png``):
- memory: RSS after warm-up (the first 20% of the run) against the mean of the last 20%; target
  growth < 5%. Open fds and threads likewise;
- lost syscalls: calls that never returned (an agent still blocked at the end, hang guard 120 s)
  and unexpected exceptions; target 0. Typed failures are counted by type;
- p99 latency per interval: steady means the last fifth's median p99 is within 1.5x of the first
  post-warm-up fifth's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import RESULTS, machine_info, pct, write_json  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Recorder:
    """Latencies and outcomes of the current interval, folded into one row per interval."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.failures: dict[str, int] = {}
        self.errors: list[str] = []
        self.calls = 0
        self.by_call: dict[str, list[float]] = {}  # latencies per SDK call over the whole run (small)

    def call(self, fn, *args, **kwargs):
        from aios.kernel.syscall import SyscallFailed

        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except SyscallFailed as exc:
            with self.lock:
                self.failures[exc.error.type] = self.failures.get(exc.error.type, 0) + 1
            return None
        except Exception as exc:  # not a typed failure: counted as lost/unexpected
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            dt = time.perf_counter() - t0
            with self.lock:
                self.lat.append(dt)
                self.calls += 1
                self.by_call.setdefault(fn.__name__, []).append(dt)

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            lat, self.lat = self.lat, []
            n, self.calls = self.calls, 0
        return lat, n


def agent_loop(rec: Recorder, deadline: float, rounds: list[int]):
    import aios

    def body(_):
        name = aios.current().agent
        i = 0
        while time.monotonic() < deadline:
            r = rec.call
            r(aios.chat, f"{name} says hello {i % 7}", max_new_tokens=6, temperature=0.7 if i % 2 else 0.0)
            item = r(aios.memory_add, f"{name} note {i} " + "x" * 200)
            r(aios.memory_search, f"{name} note", k=2)
            if item:
                r(aios.memory_delete, item["id"])
            r(aios.storage_put, f"k{i % 5}", f"{name} document {i}")
            r(aios.storage_get, f"k{i % 5}")
            if i % 5 == 0:
                r(aios.storage_search, "document", k=2)
            r(aios.tool_call, "calculator", {"expression": f"{i} * 3 + 1"})
            r(aios.file_write, "f.txt", f"{name} {i}")
            r(aios.file_read, "f.txt")
            i += 1
        rounds.append(i)
        return i

    return body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--name", default="soak")
    ap.add_argument("--history", type=int, default=2000,
                    help="kernel history_limit: small, so the by-design bounded history fills during warm-up")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import tempfile

    from conftest import build_tiny_model, build_tiny_tokenizer

    import aios
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig

    info = machine_info(args.threads)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    data = Path(tempfile.mkdtemp(prefix="aios-soak-"))
    cfg = KernelConfig(model="tiny", scheduler="rr", quantum=4, max_batch_size=8, embedder="hash",
                       data_dir=data / "data", memory_budget_mb=1, workers=16,
                       history_limit=args.history)  # fmt: skip
    kernel = Kernel(cfg, llm=LLMEngine(model, tok, cfg))
    rec = Recorder()
    start = time.monotonic()
    deadline = start + args.minutes * 60
    rounds: list[int] = []
    body = agent_loop(rec, deadline, rounds)
    specs = [aios.AgentSpec(name=f"soak{i:03d}", fn=body) for i in range(args.agents)]
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(runs=aios.run_agents(kernel, specs)), daemon=True)
    runner.start()
    samples = []
    last = start
    while runner.is_alive() and time.monotonic() < deadline + 120:  # 120 s past the deadline: hang guard
        runner.join(timeout=args.interval)
        lat, n = rec.take()
        now = time.monotonic()
        t, dt, last = now - start, now - last, now
        samples.append({
            "t_s": round(t, 1), "rss_mb": round(rss_mb(), 1), "fds": open_fds(), "threads": threading.active_count(),
            "calls": n, "calls_per_s": round(n / dt, 1), "p50_ms": pct(lat, 50) * 1e3 if lat else None,
            "p99_ms": pct(lat, 99) * 1e3 if lat else None, "loadavg_1m": os.getloadavg()[0],
        })  # fmt: skip
        print(json.dumps(samples[-1]), flush=True)
    hung = runner.is_alive()
    runs = box.get("runs", [])
    kernel_stats = kernel.llm.stats()
    history_len = len(kernel.history())
    kernel.shutdown()

    run_s = args.minutes * 60
    warm = [s for s in samples if s["t_s"] <= 0.2 * run_s]
    late = [s for s in samples if 0.8 * run_s <= s["t_s"] <= run_s + args.interval]
    post = [s for s in samples if 0.2 * run_s < s["t_s"] <= 0.4 * run_s]
    rss_warm = warm[-1]["rss_mb"] if warm else samples[0]["rss_mb"]
    rss_late = statistics.fmean(s["rss_mb"] for s in late) if late else samples[-1]["rss_mb"]
    def p99(xs: list[dict]) -> float | None:
        vals = [s["p99_ms"] for s in xs if s["p99_ms"] is not None]
        return statistics.median(vals) if vals else None

    summary = {
        "agents": args.agents,
        "minutes": args.minutes,
        "syscalls": sum(s["calls"] for s in samples),
        "rounds_per_agent_mean": statistics.fmean(rounds) if rounds else 0,
        "typed_failures": rec.failures,
        "unexpected_errors": len(rec.errors),
        "unexpected_error_examples": rec.errors[:5],
        "agents_hung": hung,
        "agent_errors": [r.error for r in runs if not r.ok][:5],
        "lost_syscalls": (args.agents - len(rounds)) if hung else 0,
        "rss_mb_after_warmup": rss_warm,
        "rss_mb_last_fifth_mean": rss_late,
        "rss_growth_pct": 100 * (rss_late - rss_warm) / rss_warm,
        "fds_after_warmup": warm[-1]["fds"] if warm else None,
        "fds_last_fifth_max": max((s["fds"] for s in late), default=None),
        "threads_after_warmup": warm[-1]["threads"] if warm else None,
        "threads_last_fifth_max": max((s["threads"] for s in late), default=None),
        "p99_ms_after_warmup": p99(post),
        "p99_ms_last_fifth": p99(late),
        "latency_ms_by_call": {
            name: {"n": len(v), "p50": round(pct(v, 50) * 1e3, 1), "p99": round(pct(v, 99) * 1e3, 1)}
            for name, v in sorted(rec.by_call.items())
        },
        "engine": {k: kernel_stats[k] for k in ("completed", "failed", "preemptions", "generated_tokens")},
        "kernel_history_len": history_len,
        "kernel_history_limit": args.history,
    }
    summary["targets"] = {
        "rss_growth_lt_5pct": summary["rss_growth_pct"] < 5,
        "no_lost_syscalls": summary["lost_syscalls"] == 0 and not summary["unexpected_errors"] and not hung,
        "p99_steady_within_1_5x": bool(
            summary["p99_ms_after_warmup"]
            and summary["p99_ms_last_fifth"] is not None
            and summary["p99_ms_last_fifth"] <= 1.5 * summary["p99_ms_after_warmup"]
        ),
    }
    path = write_json(args.name, {"machine": info, "summary": summary, "samples": samples})
    plot(samples, RESULTS / f"{args.name}.png", summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


def plot(samples: list[dict], out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, [s["rss_mb"] for s in samples])
    ax[0].set_ylabel("RSS (MiB)")
    ax[0].set_title(f"soak: {summary['agents']} agents, {summary['syscalls']} syscalls, "
                    f"RSS growth after warm-up {summary['rss_growth_pct']:+.1f}%")  # fmt: skip
    ax[1].plot(t, [s["fds"] for s in samples], label="open fds")
    ax[1].plot(t, [s["threads"] for s in samples], label="threads")
    ax[1].legend()
    ax[2].plot(t, [s["p99_ms"] for s in samples], label="p99")
    ax[2].plot(t, [s["p50_ms"] for s in samples], label="p50")
    ax[2].set_ylabel("syscall latency (ms)")
    ax[2].set_yscale("log")
    ax[2].legend()
    ax[2].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
