"""The kernel as a service vs in process: what does crossing a process boundary cost?

One run, same model and kernel settings on both sides, the in-process kernel first, then
``aios serve`` as a subprocess (never both at once: they would share the 2 cores):

1. per-syscall latency, one agent, sequential calls, p50/p99: a no-op memory call
   (``memory_usage``) and a 16-token chat; service over TCP and over the Unix socket;
2. throughput with 32 agents: 32 threads in process vs 32 agent *processes* against the server,
   each doing N no-op calls then one 16-token chat, started together behind a barrier (process
   start-up is not timed); calls/s and chat tokens/s;
3. aggregate tokens/s of 8 agents through the OpenAI endpoint (the official ``openai`` client, one
   thread per agent) vs the same 8 requests in process (target >= 0.9x); the texts must be equal.

Writes ``results/service.json`` and ``results/service.md``.

    python benchmarks/bench_service.py [--model smollm2] [--procs 32] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, pct, story_messages, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "Name three colours and say why you like them."}]

# one agent process of phase 2: connect, wait for "go", no-op calls; wait for "go", one chat
AGENT = r"""
import json, sys, time
import aios
conn = aios.connect(sys.argv[1], sys.argv[2])
conn.memory_usage()
print("ready", flush=True)
sys.stdin.readline()
t0, lat = time.time(), []
for _ in range(int(sys.argv[3])):
    a = time.perf_counter(); conn.memory_usage(); lat.append(time.perf_counter() - a)
t1 = time.time()
print(json.dumps({"start": t0, "end": t1, "lat": lat}), flush=True)
sys.stdin.readline()
t0 = time.time()
r = conn.chat(json.loads(sys.argv[4]), max_new_tokens=int(sys.argv[5]))
print(json.dumps({"start": t0, "end": time.time(), "tokens": r.response.completion_tokens}), flush=True)
"""


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads))  # fmt: skip
    return env


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def stats(lat: list[float]) -> dict[str, float]:
    return {"n": len(lat), "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


def in_threads(n: int, work) -> list:
    """Run ``work(i, barrier)`` in n threads; returns their results in order."""
    barrier, out = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        out[i] = work(i, barrier)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def span(rows: list[dict]) -> float:
    return max(r["end"] for r in rows) - min(r["start"] for r in rows)


# -- phase 1: in process --------------------------------------------------------------------------------
def in_process(args, data: Path) -> dict:
    import aios

    kernel = aios.Kernel(model=args.model, scheduler="rr", quantum=8, max_batch_size=8, embedder="hash",
                         data_dir=data)  # fmt: skip
    res: dict = {}
    try:
        with aios.agent_context(kernel, "bench"):
            aios.chat(CHAT, max_new_tokens=2)  # warm-up
            res["noop"] = stats(timed(aios.memory_usage, args.noop_n))
            res["chat16"] = stats(timed(lambda: aios.chat(CHAT, max_new_tokens=args.chat_tokens), args.chat_n))

        def agent(i: int, barrier: threading.Barrier) -> dict:
            with aios.agent_context(kernel, f"agent{i}"):
                aios.memory_usage()
                barrier.wait()
                t0 = time.time()
                lat = timed(aios.memory_usage, args.calls)
                noop = {"start": t0, "end": time.time(), "lat": lat}
                barrier.wait()
                t0 = time.time()
                r = aios.chat(CHAT, max_new_tokens=args.chat_tokens)
                return {"noop": noop, "chat": {"start": t0, "end": time.time(),
                                               "tokens": r.response.completion_tokens}}  # fmt: skip

        rows = in_threads(args.procs, agent)
        res["many"] = summarize_many([r["noop"] for r in rows], [r["chat"] for r in rows])

        def oa_agent(i: int, barrier: threading.Barrier) -> dict:
            with aios.agent_context(kernel, f"oa{i}"):
                barrier.wait()
                t0 = time.time()
                r = aios.chat(story_messages(i), max_new_tokens=args.oa_tokens)
                return {"start": t0, "end": time.time(), "tokens": r.response.completion_tokens, "text": r.text}

        res["openai8"] = summarize_tok(in_threads(args.oa_agents, oa_agent))
    finally:
        kernel.shutdown()
    return res


def summarize_many(noop: list[dict], chat: list[dict]) -> dict:
    calls = sum(len(r["lat"]) for r in noop)
    tokens = sum(r["tokens"] for r in chat)
    return {
        "noop_calls": calls,
        "noop_calls_per_s": calls / span(noop),
        "noop_latency": stats([x for r in noop for x in r["lat"]]),
        "chat_tokens": tokens,
        "chat_tok_per_s": tokens / span(chat),
    }


def summarize_tok(rows: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in rows)
    return {"tokens": tokens, "seconds": span(rows), "tok_per_s": tokens / span(rows),
            "texts": [r["text"] for r in rows]}  # fmt: skip


# -- phase 2: as a service --------------------------------------------------------------------------------
def as_service(args, data: Path) -> dict:
    import openai

    import aios
    from aios.kernel.access import AccessManager

    data.mkdir(parents=True, exist_ok=True)
    access = AccessManager(data)
    names = ["bench", *(f"agent{i}" for i in range(args.procs)), *(f"oa{i}" for i in range(args.oa_agents))]
    tokens = {n: access.identities.add(n) for n in names}
    access.close()
    ready = data / "ready.json"
    log = (data / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "aios.cli", "serve", "--model", args.model, "--embedder", "hash", "--data-dir",
         str(data), "--port", "0", "--ready-file", str(ready), "--scheduler", "rr", "--quantum", "8",
         "--max-batch-size", "8", "-q"],
        stdout=log, stderr=subprocess.STDOUT, env=child_env(args.threads), cwd=REPO,
    )  # fmt: skip
    res: dict = {}
    try:
        while not ready.exists():
            if server.poll() is not None:
                raise RuntimeError(f"aios serve exited: {(data / 'serve.log').read_text()}")
            time.sleep(0.2)
        where = json.loads(ready.read_text())
        url, sock = where["url"], "unix://" + where["unix_socket"]
        for label, target in (("tcp", url), ("unix", sock)):
            with aios.connect(target, tokens["bench"]) as conn:
                conn.chat(CHAT, max_new_tokens=2)  # warm-up
                res[f"noop_{label}"] = stats(timed(conn.memory_usage, args.noop_n))
                if label == "tcp":
                    res["chat16_tcp"] = stats(
                        timed(lambda c=conn: c.chat(CHAT, max_new_tokens=args.chat_tokens), args.chat_n)
                    )

        procs = [
            subprocess.Popen([sys.executable, "-c", AGENT, url if i % 2 == 0 else sock, tokens[f"agent{i}"],
                              str(args.calls), json.dumps(CHAT), str(args.chat_tokens)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(1))
            for i in range(args.procs)
        ]  # fmt: skip
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for phase in ("noop", "chat"):
            for p in procs:  # the barrier: every process is waiting on its stdin
                p.stdin.write("go\n")
                p.stdin.flush()
            res.setdefault("_rows", {})[phase] = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.close()
            p.wait(600)
        rows = res.pop("_rows")
        res["many"] = summarize_many(rows["noop"], rows["chat"])
        res["many"]["transport"] = "half TCP, half Unix socket"

        model_id = openai.OpenAI(base_url=url + "/v1", api_key=tokens["bench"]).models.list().data[0].id

        def oa_agent(i: int, barrier: threading.Barrier) -> dict:
            client = openai.OpenAI(base_url=url + "/v1", api_key=tokens[f"oa{i}"], max_retries=0, timeout=1800)
            barrier.wait()
            t0 = time.time()
            r = client.chat.completions.create(model=model_id, messages=story_messages(i),
                                               max_tokens=args.oa_tokens)  # fmt: skip
            return {"start": t0, "end": time.time(), "tokens": r.usage.completion_tokens,
                    "text": r.choices[0].message.content}  # fmt: skip

        res["openai8"] = summarize_tok(in_threads(args.oa_agents, oa_agent))
    finally:
        server.send_signal(signal.SIGTERM)
        res["server_exit"] = server.wait(600)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    ap.add_argument("--noop-n", type=int, default=200)
    ap.add_argument("--chat-n", type=int, default=10)
    ap.add_argument("--chat-tokens", type=int, default=16)
    ap.add_argument("--procs", type=int, default=32)
    ap.add_argument("--calls", type=int, default=20, help="no-op calls per agent in the 32-agent run")
    ap.add_argument("--oa-agents", type=int, default=8)
    ap.add_argument("--oa-tokens", type=int, default=64)
    ap.add_argument("--note", default="", help="how the run was taken (recorded in the results)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    with tempfile.TemporaryDirectory(prefix="aios-bench-service-") as tmp:
        t0 = time.perf_counter()
        local = in_process(args, Path(tmp) / "inproc")
        print("in process:", json.dumps({k: v for k, v in local.items() if k != "openai8"}), flush=True)
        remote = as_service(args, Path(tmp) / "serve")
        print("service:", json.dumps({k: v for k, v in remote.items() if k != "openai8"}), flush=True)
        wall = time.perf_counter() - t0

    lo, re_ = local, remote
    ratios = {
        "noop_p50_service_tcp_over_inproc": re_["noop_tcp"]["p50_ms"] / lo["noop"]["p50_ms"],
        "noop_p99_service_tcp_over_inproc": re_["noop_tcp"]["p99_ms"] / lo["noop"]["p99_ms"],
        "noop_p50_service_unix_over_inproc": re_["noop_unix"]["p50_ms"] / lo["noop"]["p50_ms"],
        "chat16_p50_service_over_inproc": re_["chat16_tcp"]["p50_ms"] / lo["chat16"]["p50_ms"],
        "chat16_p99_service_over_inproc": re_["chat16_tcp"]["p99_ms"] / lo["chat16"]["p99_ms"],
        f"noop_calls_per_s_{args.procs}_procs_over_threads": re_["many"]["noop_calls_per_s"]
        / lo["many"]["noop_calls_per_s"],
        f"chat_tok_per_s_{args.procs}_procs_over_threads": re_["many"]["chat_tok_per_s"] / lo["many"]["chat_tok_per_s"],
        f"openai_tok_per_s_{args.oa_agents}_agents_over_inproc": re_["openai8"]["tok_per_s"] / lo["openai8"]["tok_per_s"],
    }
    same_texts = re_["openai8"]["texts"] == lo["openai8"]["texts"]
    data = {
        "benchmark": "service",
        "model": args.model,
        "kernel": {"scheduler": "rr", "quantum": 8, "max_batch_size": 8, "batch_invariant": True},
        "args": vars(args),
        "machine": info,
        "wall_s": wall,
        "in_process": {k: v for k, v in lo.items()},
        "service": {k: v for k, v in re_.items()},
        "ratios": ratios,
        "openai_texts_equal_in_process": same_texts,
        "targets_met": {f"openai_tok_per_s_at_{args.oa_agents}>=0.9x": ratios[
            f"openai_tok_per_s_{args.oa_agents}_agents_over_inproc"] >= 0.9},  # fmt: skip
    }
    for side in (data["in_process"], data["service"]):
        side["openai8"] = {k: v for k, v in side["openai8"].items() if k != "texts"}
    path = write_json("service", data)
    (RESULTS / "service.md").write_text(report(data))
    print(report(data))
    print("wrote", path)


def report(d: dict) -> str:
    lo, re_, r, a = d["in_process"], d["service"], d["ratios"], d["args"]
    k_noop = f"noop_calls_per_s_{a['procs']}_procs_over_threads"
    k_chat = f"chat_tok_per_s_{a['procs']}_procs_over_threads"
    k_oa = f"openai_tok_per_s_{a['oa_agents']}_agents_over_inproc"
    load = d["machine"]["loadavg_at_start"]
    lines = [
        "# Service vs in process",
        "",
        f"Model {d['model']}, kernel rr/quantum 8/max_batch_size 8 on both sides, torch threads "
        f"{a['threads']}; load average at start {load[0]:.1f} on {d['machine']['cpu_count']} CPUs"
        + (" (a shared, loaded machine: read the ratios, not the absolute numbers)." if load[0] > 2 else "."),
        "",
        "| what | in process | service | service / in process |",
        "|---|---|---|---|",
        f"| no-op memory call p50 (TCP) | {lo['noop']['p50_ms']:.2f} ms | {re_['noop_tcp']['p50_ms']:.2f} ms | "
        f"{r['noop_p50_service_tcp_over_inproc']:.1f}x |",
        f"| no-op memory call p99 (TCP) | {lo['noop']['p99_ms']:.2f} ms | {re_['noop_tcp']['p99_ms']:.2f} ms | "
        f"{r['noop_p99_service_tcp_over_inproc']:.1f}x |",
        f"| no-op memory call p50 (Unix socket) | {lo['noop']['p50_ms']:.2f} ms | {re_['noop_unix']['p50_ms']:.2f} ms"
        f" | {r['noop_p50_service_unix_over_inproc']:.1f}x |",
        f"| {a['chat_tokens']}-token chat p50 | {lo['chat16']['p50_ms']:.0f} ms | {re_['chat16_tcp']['p50_ms']:.0f} ms | "
        f"{r['chat16_p50_service_over_inproc']:.2f}x |",
        f"| {a['chat_tokens']}-token chat p99 | {lo['chat16']['p99_ms']:.0f} ms | {re_['chat16_tcp']['p99_ms']:.0f} ms | "
        f"{r['chat16_p99_service_over_inproc']:.2f}x |",
        f"| {a['procs']} agents: no-op calls/s (threads vs processes) | {lo['many']['noop_calls_per_s']:.0f} | "
        f"{re_['many']['noop_calls_per_s']:.0f} | {r[k_noop]:.2f}x |",
        f"| {a['procs']} agents: one {a['chat_tokens']}-token chat each, tok/s | {lo['many']['chat_tok_per_s']:.1f} | "
        f"{re_['many']['chat_tok_per_s']:.1f} | {r[k_chat]:.2f}x |",
        f"| {a['oa_agents']} agents x {a['oa_tokens']} tokens, tok/s (OpenAI endpoint) | "
        f"{lo['openai8']['tok_per_s']:.1f} | {re_['openai8']['tok_per_s']:.1f} | "
        f"**{r[k_oa]:.2f}x** (target >= 0.9x) |",
        "",
        *([f"Note: {a['note']}", ""] if a.get("note") else []),
        f"OpenAI endpoint texts identical to the in-process texts: {d['openai_texts_equal_in_process']}. "
        f"Server exit status after SIGTERM: {re_['server_exit']}. Whole run {d['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
