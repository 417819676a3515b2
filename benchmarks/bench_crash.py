"""Crash loop: a kernel SIGKILLed at random points, again and again; is anything acknowledged lost?

``python benchmarks/bench_crash.py [--kills 20] [--seed 0]``

Each cycle starts a kernel process on the same ``data_dir`` and ``state_dir`` (so it first resumes
what the previous one left unfinished), then submits LLM syscalls (greedy, seeded and unseeded
sampling, beams) and storage writes, printing each acknowledgement, until this process kills it
with ``SIGKILL`` after a random number of acknowledgements and a random delay (seeded: the same
schedule every run; the kill can land anywhere, including inside the recovery of the previous
cycle's work). At the end a kernel started here on the same directories must return, for every
acknowledged LLM syscall of every cycle, exactly the tokens of the same request run alone, and
every acknowledged storage write. Result: ``benchmarks/results/crash.json``; target 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from _common import machine_info, write_json  # noqa: E402

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from conftest import build_tiny_model, build_tiny_tokenizer
    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig
    from aios.kernel.storage import PutItem, StorageSyscall
    from aios.kernel.syscall import LLMRequest, LLMSyscall

    root, cycle = sys.argv[1], int(sys.argv[2])
    tok = build_tiny_tokenizer()
    cfg = KernelConfig(model="tiny", scheduler="rr", quantum=3, max_batch_size=4, embedder="hash",
                       data_dir=root + "/data", state_dir=root + "/state")
    k = Kernel(cfg, llm=LLMEngine(build_tiny_model(tok), tok, cfg))
    print(json.dumps(["up", len(k.journal.recovered)]), flush=True)
    me = k.credential_for("crash", by=k.owner)
    for j in range(10_000):
        spec = {spec!s}[j % 4]
        sc = LLMSyscall(request=LLMRequest(
            messages=[{{"role": "user", "content": f"cycle {{cycle}} request {{j}} tell a story"}}], **spec))
        k.submit(sc, me)
        print(json.dumps(["llm", sc.id, cycle, j]), flush=True)
        put = k.submit(StorageSyscall(request=PutItem(key=f"c{{cycle}}-{{j}}", content=f"v{{cycle}}-{{j}}")), me)
        put.wait(120)
        print(json.dumps(["put", f"c{{cycle}}-{{j}}"]), flush=True)
    """
)

SPECS = [
    {"max_new_tokens": 24},
    {"max_new_tokens": 20, "temperature": 0.9, "seed": 5},
    {"max_new_tokens": 16, "temperature": 0.8},
    {"max_new_tokens": 12, "num_beams": 2},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    info = machine_info(1)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="aios-crash-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    script = CHILD.format(tests=str(ROOT / "tests"), spec=json.dumps(SPECS))
    acked_llm: list[tuple[str, int, int]] = []
    acked_put: list[str] = []
    cycles = []
    t0 = time.time()
    for cycle in range(args.kills):
        after, delay = rng.randint(1, 12), rng.uniform(0.0, 0.4)
        err = root / f"cycle{cycle}.stderr"
        p = subprocess.Popen([sys.executable, "-c", script, str(root), str(cycle)], stdout=subprocess.PIPE,
                             stderr=err.open("w"), text=True, env=env)  # fmt: skip
        n, recovered = 0, None
        for line in p.stdout:
            msg = json.loads(line)
            if msg[0] == "up":
                recovered = msg[1]
            elif msg[0] == "llm":
                acked_llm.append((msg[1], msg[2], msg[3]))
                n += 1
            elif msg[0] == "put":
                acked_put.append(msg[1])
            if n >= after:
                break
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        # acknowledgements printed before the kill landed still count
        for line in p.stdout:
            msg = json.loads(line)
            if msg[0] == "llm":
                acked_llm.append((msg[1], msg[2], msg[3]))
            elif msg[0] == "put":
                acked_put.append(msg[1])
        p.wait()
        cycles.append({"cycle": cycle, "resumed_at_start": recovered, "killed_after_acks": after,
                       "extra_delay_s": round(delay, 3), "rc": p.returncode})  # fmt: skip
        if p.returncode != -signal.SIGKILL:  # it died on its own: keep why
            cycles[-1]["stderr_tail"] = err.read_text()[-3000:]
        print(json.dumps(cycles[-1]), flush=True)

    from conftest import build_tiny_model, build_tiny_tokenizer

    from aios.kernel.engine import LLMEngine
    from aios.kernel.kernel import Kernel, KernelConfig
    from aios.kernel.syscall import LLMRequest, LLMSyscall

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    cfg = KernelConfig(model="tiny", scheduler="rr", quantum=3, max_batch_size=4, embedder="hash",
                       data_dir=root / "data", state_dir=root / "state")  # fmt: skip
    lost, wrong = [], []
    with Kernel(cfg, llm=LLMEngine(model, tok, cfg)) as k:
        me = k.credential_for("crash", by=k.owner)
        for sid, cycle, j in acked_llm:
            try:
                got = k.collect(sid, me, timeout=300)
            except Exception as exc:  # noqa: BLE001 - any failure to produce it is a loss
                lost.append((sid, f"{type(exc).__name__}: {exc}"))
                continue
            spec = dict(SPECS[j % 4])
            if spec.get("temperature"):
                spec["seed"] = got.seed
            ref = LLMSyscall(agent="crash", request=LLMRequest(
                messages=[{"role": "user", "content": f"cycle {cycle} request {j} tell a story"}], **spec))  # fmt: skip
            eng = LLMEngine(model, tok, scheduler="fifo", max_batch_size=4)
            eng.add(ref)
            eng.run_until_idle()
            eng.close()
            if ref.result.token_ids != got.token_ids:
                wrong.append(sid)
        st = k.modules["storage"]
        missing = []
        for key in acked_put:
            try:
                if st.get("crash", key)["content"] != "v" + key[1:]:
                    missing.append(key)
            except Exception:  # noqa: BLE001
                missing.append(key)
        journal = k.journal.counts()
    summary = {
        "kills": args.kills,
        "killed_by_sigkill": sum(c["rc"] == -signal.SIGKILL for c in cycles),
        "acknowledged_generations": len(acked_llm),
        "acknowledged_writes": len(acked_put),
        "resumed_after_a_kill": sum(c["resumed_at_start"] or 0 for c in cycles),
        "generations_lost": len(lost),
        "generations_not_exact": len(wrong),
        "writes_lost": len(missing),
        "journal_final": journal,
        "wall_s": round(time.time() - t0, 1),
        "examples": {"lost": lost[:3], "wrong": wrong[:3], "missing": missing[:3]},
    }
    summary["target_0_lost"] = not lost and not wrong and not missing
    path = write_json("crash", {"machine": info, "summary": summary, "cycles": cycles})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0 if summary["target_0_lost"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
