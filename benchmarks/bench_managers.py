"""Benchmark the memory and storage managers through real syscalls, and retrieval quality.

    python benchmarks/bench_managers.py [--embedder minilm|hash] [--ops 100] [--out benchmarks/results]

Latency is each syscall's turnaround (created -> finished, so it includes queueing in the
kernel's worker pool); throughput is completed syscalls / wall time of the phase. Each phase runs
one operation type at 1 and at 32 concurrent agents (one thread per agent, each issuing its ops
back to back). Storage writes are acknowledged only after SQLite's fsync (synchronous=FULL) and
the chromadb upsert, so ``storage put`` measures durable writes.

Retrieval: recall@5 on a small hand-labelled set (``RETRIEVAL_SET``): 30 short documents on
mixed topics, 20 queries phrased without the documents' words where possible; each query has one
or two relevant documents. recall@5 = share of relevant documents found in the top 5, averaged
over queries. The hashing embedder is reported as a lexical baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

from _common import pct  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import aios  # noqa: E402
from aios.kernel.embedding import HashEmbedder, MiniLMEmbedder  # noqa: E402

DOCS = {
    "d01": "The cat curled up on the windowsill and slept all afternoon.",
    "d02": "Our golden retriever fetches sticks at the beach every morning.",
    "d03": "The central bank raised interest rates by half a percentage point.",
    "d04": "Quarterly earnings beat analyst expectations thanks to cloud sales.",
    "d05": "The flight to Tokyo departs from gate 22 at 9:40.",
    "d06": "Our hotel in Lisbon is two blocks from the river.",
    "d07": "Preheat the oven to 200 degrees and bake the bread for 35 minutes.",
    "d08": "Whisk eggs, sugar and butter, then fold in the flour gently.",
    "d09": "The patient was prescribed antibiotics for a bacterial infection.",
    "d10": "Regular exercise lowers blood pressure and improves sleep.",
    "d11": "The striker scored twice in the second half to win the final.",
    "d12": "The tennis match went to a fifth-set tiebreak.",
    "d13": "A memory leak in the server caused it to crash every night.",
    "d14": "We migrated the database from MySQL to PostgreSQL last week.",
    "d15": "The telescope captured images of a distant spiral galaxy.",
    "d16": "Astronauts returned from the space station after six months in orbit.",
    "d17": "Heavy rain and strong winds are expected over the weekend.",
    "d18": "Temperatures will climb above 35 degrees during the heatwave.",
    "d19": "The novel follows a detective investigating a murder in Venice.",
    "d20": "The orchestra performed Beethoven's ninth symphony to a full hall.",
    "d21": "Plant the tomato seedlings after the last frost in spring.",
    "d22": "Prune the rose bushes in late winter to encourage new growth.",
    "d23": "The new electric car can drive 500 kilometres on one charge.",
    "d24": "Replace the brake pads when they are thinner than three millimetres.",
    "d25": "The toddler learned to say her first words at eleven months.",
    "d26": "Parents should read aloud to young children every day.",
    "d27": "The museum opened an exhibition of impressionist paintings.",
    "d28": "The city council approved a new bicycle lane on Main Street.",
    "d29": "Our rent increases by four percent when the lease renews.",
    "d30": "The mortgage application needs two recent payslips.",
}
QUERIES = [
    ("which pet naps in the sun", ["d01"]),
    ("dog playing on the sand", ["d02"]),
    ("monetary policy tightening", ["d03"]),
    ("company profits this quarter", ["d04"]),
    ("when does my plane to Japan leave", ["d05"]),
    ("where am I staying in Portugal", ["d06"]),
    ("how long to cook the loaf", ["d07"]),
    ("cake batter instructions", ["d08", "d07"]),
    ("medication for an infection", ["d09"]),
    ("health benefits of working out", ["d10"]),
    ("football cup final result", ["d11"]),
    ("sports games that were very close", ["d12", "d11"]),
    ("why does the service go down at night", ["d13"]),
    ("switching our SQL database", ["d14"]),
    ("astronomy observations", ["d15", "d16"]),
    ("weather forecast for the weekend", ["d17", "d18"]),
    ("a crime mystery book", ["d19"]),
    ("classical music concert", ["d20"]),
    ("gardening advice", ["d21", "d22"]),
    ("housing costs", ["d29", "d30"]),
]


def run_phase(kernel, op: str, agents: int, ops_per_agent: int) -> dict:
    """``agents`` threads, each acting as its own agent, issue ``ops_per_agent`` syscalls of ``op``."""
    barrier = threading.Barrier(agents + 1)
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def prepare(name: str) -> list:
        # state the op needs (not timed): items to get / search
        with aios.agent_context(kernel, name):
            if op in ("memory get", "memory search"):
                return [
                    aios.memory_add(f"{name} note {j} about {DOCS[f'd{j % 30 + 1:02d}']}")["id"]
                    for j in range(10)
                ]
            if op in ("storage get", "storage search"):
                for j in range(10):
                    aios.storage_put(f"seed{j}", f"{name} {DOCS[f'd{j % 30 + 1:02d}']}")
        return []

    def agent(idx: int) -> None:
        name = f"bench-{op.replace(' ', '-')}-{agents}-{idx}"
        ids = prepare(name)
        mine: list[float] = []
        with aios.agent_context(kernel, name):
            barrier.wait()
            for j in range(ops_per_agent):
                text = DOCS[f"d{(idx + j) % 30 + 1:02d}"]
                ctx = aios.current()
                from aios.kernel.memory import MemorySyscall
                from aios.kernel.storage import StorageSyscall

                if op == "memory add":
                    sc = MemorySyscall(agent=name, request=dict(op="add", content=f"{j} {text}"))
                elif op == "memory get":
                    sc = MemorySyscall(agent=name, request=dict(op="get", id=ids[j % len(ids)]))
                elif op == "memory search":
                    sc = MemorySyscall(agent=name, request=dict(op="search", query=text, k=5))
                elif op == "storage put":
                    sc = StorageSyscall(
                        agent=name, request=dict(op="put", key=f"k{j}", content=text)
                    )
                elif op == "storage get":
                    sc = StorageSyscall(agent=name, request=dict(op="get", key=f"seed{j % 10}"))
                else:
                    sc = StorageSyscall(agent=name, request=dict(op="search", query=text, k=5))
                try:
                    ctx.call(sc)
                    mine.append(sc.turnaround_time)
                except Exception as exc:  # recorded, reported; a benchmark must not hide failures
                    errors.append(f"{type(exc).__name__}: {exc}")
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "op": op,
        "agents": agents,
        "ops": len(lat),
        "errors": len(errors),
        "ops_per_s": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * pct(lat, 99),
        "mean_ms": 1000 * statistics.fmean(lat),
    }


def recall_at_5(embedder, data_dir: Path) -> float:
    k = aios.Kernel(data_dir=data_dir, embedder="hash")
    k.modules["storage"].embedder = embedder
    try:
        with aios.agent_context(k, "librarian"):
            for key, text in DOCS.items():
                aios.storage_put(key, text)
            scores = []
            for query, relevant in QUERIES:
                top = [h["key"] for h in aios.storage_search(query, k=5)]
                scores.append(sum(r in top for r in relevant) / len(relevant))
        return statistics.fmean(scores)
    finally:
        k.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedder", choices=["minilm", "hash"], default="minilm")
    ap.add_argument("--ops", type=int, default=100, help="ops per phase at 1 agent (32 agents: ops/10 each)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    minilm = MiniLMEmbedder()
    t = time.perf_counter()
    minilm.embed(["warm up"])
    load_s = time.perf_counter() - t
    embedder = minilm if args.embedder == "minilm" else HashEmbedder()

    rows = []
    with tempfile.TemporaryDirectory(prefix="aios-bench-") as tmp:
        k = aios.Kernel(data_dir=Path(tmp) / "lat", embedder="hash", workers=8)
        k.modules["storage"].embedder = embedder
        k.modules["storage"].reconcile()  # open the index now, not inside the first timed op
        try:
            for op in [
                "memory add",
                "memory get",
                "memory search",
                "storage put",
                "storage get",
                "storage search",
            ]:
                for agents, per in [(1, args.ops), (32, max(1, args.ops // 10))]:
                    r = run_phase(k, op, agents, per)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
        finally:
            k.shutdown()
        recall = {
            "minilm": recall_at_5(minilm, Path(tmp) / "r1"),
            "hash (lexical baseline)": recall_at_5(HashEmbedder(), Path(tmp) / "r2"),
        }
    print("recall@5", recall)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": sys.version.split()[0],
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "minilm_encode_batches": minilm.batches,
        "embedder": args.embedder,
        "minilm_load_s": round(load_s, 2),
        "kernel_workers": 8,
        "storage": "SQLite WAL synchronous=FULL + embedded chromadb PersistentClient",
        "queries": len(QUERIES),
        "documents": len(DOCS),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "managers" if args.embedder == "minilm" else f"managers_{args.embedder}"
    (args.out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "latency": rows, "recall_at_5": recall}, indent=2)
    )
    lines = [
        "# Memory and storage managers",
        "",
        f"{meta['date']} · {meta['machine']} · Python {meta['python']} · embedder: {args.embedder} · "
        f"{meta['storage']} · 8 kernel workers · load average {meta['load_average_at_end']} (shared machine). "
        "Latency = syscall turnaround (includes queueing).",
        "",
        "| operation | agents | ops | ops/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['agents']} | {r['ops']} | {r['ops_per_s']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} |"
        )
    lines += [
        "",
        f"Retrieval recall@5 ({len(QUERIES)} labelled queries over {len(DOCS)} documents, `storage_search`):",
        "",
        "| embedder | recall@5 |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {v:.3f} |" for name, v in recall.items()]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
