"""Snapshot cost: suspending and restoring a generation's context vs recomputing it (re-prefill).

For contexts of 128, 512 and 2048 tokens on SmolLM2 (CPU): time to snapshot (copy the KV out of the
batch slot into the context manager) and restore (back into a free slot), in memory and spilled to
disk (safetensors), against the time to re-prefill the same tokens; bytes per snapshot. These are
exactly the calls the engine makes on suspend/resume (``SlotKVCache.read`` + ``ContextManager.store``,
``ContextManager.load`` + ``SlotKVCache.write``). The restored KV is checked to continue bit-exactly.

Target: restore <= 10% of re-prefill at 2048 tokens. Writes ``results/snapshot.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="128,512,2048")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from aios.kernel.context import ContextManager
    from aios.kernel.llm import load_model
    from aios.kernel.model_runner import Chunk, ModelRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2", "cpu")
    runner = ModelRunner(model, max_rows=8, batch_invariant=True)
    mem = ContextManager(memory_budget_mb=4096)
    spill = tempfile.TemporaryDirectory(prefix="aios-bench-kv-")
    disk = ContextManager(memory_budget_mb=0, spill_dir=spill.name)
    g = torch.Generator().manual_seed(0)

    def timed(fn, reps):
        out, times = None, []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    rows = []
    for n in [int(x) for x in args.contexts.split(",")]:
        ids = torch.randint(100, model.config.vocab_size - 100, (n,), generator=g).tolist()
        slot, other = 0, 1
        logits, t_prefill = timed(lambda ids=ids, slot=slot: runner.run([Chunk(slot, ids, 0)])[0], args.reps)
        nxt = int(logits.argmax())
        ref = runner.run([Chunk(slot, [nxt], n)])[0]  # what the uninterrupted continuation computes
        row = {"context": n, "reprefill_s": t_prefill}
        for name, ctx in (("mem", mem), ("disk", disk)):
            handle, t_snap = timed(lambda ctx=ctx, slot=slot, n=n: ctx.store([runner.cache.read(slot, n)]), 1)
            t_restore_list = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                kv = ctx.load(handle)
                runner.cache.write(other, kv[0])
                t_restore_list.append(time.perf_counter() - t0)
                handle = ctx.store(kv)  # put it back for the next repetition (not timed)
            ctx.release(handle)
            got = runner.run([Chunk(other, [nxt], n)])[0]
            row[f"snapshot_{name}_s"] = t_snap
            row[f"restore_{name}_s"] = statistics.median(t_restore_list)
            row[f"exact_{name}"] = bool(torch.equal(got, ref))
            row["bytes"] = handle.nbytes
        row["restore_mem_vs_prefill"] = row["restore_mem_s"] / t_prefill
        row["restore_disk_vs_prefill"] = row["restore_disk_s"] / t_prefill
        rows.append(row)
        print(
            f"  ctx={n:5d} prefill {t_prefill * 1e3:8.1f} ms | snapshot {row['snapshot_mem_s'] * 1e3:6.1f} ms "
            f"restore {row['restore_mem_s'] * 1e3:6.1f} ms (disk {row['restore_disk_s'] * 1e3:6.1f} ms) "
            f"| {row['bytes'] / 2**20:6.1f} MiB",
            flush=True,
        )
    spill.cleanup()
    last = rows[-1]
    data = {
        "benchmark": "snapshot",
        "model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "machine": machine_info(torch.get_num_threads()),
        "rows": rows,
        "targets_met": {f"restore<=10%_of_reprefill_at_{last['context']}": last["restore_mem_vs_prefill"] <= 0.10},
    }
    path = write_json("snapshot", data)
    print()
    cols = ["context", "reprefill_s", "snapshot_mem_s", "restore_mem_s", "snapshot_disk_s", "restore_disk_s",
            "restore_mem_vs_prefill", "restore_disk_vs_prefill", "bytes", "exact_mem", "exact_disk"]
    print(table(rows, cols))
    print("targets:", data["targets_met"])
    print("wrote", path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["context"] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in (("reprefill_s", "re-prefill"), ("snapshot_mem_s", "snapshot (memory)"),
                           ("restore_mem_s", "restore (memory)"), ("restore_disk_s", "restore (disk)")):
            ax.plot(xs, [r[key] * 1e3 for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context tokens")
        ax.set_ylabel("ms")
        ax.set_title("Suspend/resume cost vs recomputing the context (SmolLM2, CPU)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "snapshot.png", dpi=120)
    except Exception as exc:
        print("plot skipped:", exc)


if __name__ == "__main__":
    main()
