"""LLM throughput and latency: aios next to vLLM-CPU, llama.cpp and transformers, in one run (issue #12).

What is measured, on SmolLM2-135M (the embedded model), greedy, the same chat prompts for everyone:

- **aggregate tok/s** at 1, 8, 16 and 32 concurrent requests of 64 new tokens (generated tokens
  divided by the wall time from the first request's submission to the last one's completion, so
  prefill is included);
- **time to first token** for a ~512-token prompt (one request alone, 1 new token; median of a few
  different prompts, so no prefix cache helps);

for
- ``aios``: the kernel through its public API (``aios.Kernel(...)``, one agent thread per request
  calling ``aios.chat``), FIFO, fp32 and bf16;
- ``vllm``: vLLM-CPU's offline ``LLM.generate`` on the same converted safetensors folder, fp32 and
  bf16 (from its side virtualenv; prefix caching off);
- ``llama.cpp``: ``llama-server`` with one slot per request (HTTP ``/completion``), and
  ``llama-batched-bench``, both on the embedded Q4_1 GGUF (llama.cpp computes on the 4-bit weights,
  the others on the dequantized fp32/bf16 ones);
- ``transformers``: ``generate`` one request after another (the floor) and one padded ``generate``
  call over the whole batch.

At start it measures the roofline with torch on the same threads (2048x2048 GEMM GFLOP/s in bf16
and fp32, memory copy GB/s) and records the load average, the peers' versions and their install
state. Each system runs in its own subprocess, one after another, never concurrently. A peer that
is not installed is reported as such (``aios bench llm --peers`` installs both into the cache).

    python benchmarks/bench_llm.py                       # everything, writes results/llm.{json,md,png}
    python benchmarks/bench_llm.py --only aios --agents 1,8 --dtypes float32   # a quick check

Only the standard library is imported at module level: the vLLM worker runs this file under the
side virtualenv's python, which has vLLM and torch but not aios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SYSTEMS = ("aios", "transformers", "llama.cpp", "vllm")  # vLLM last: its start is the slowest
TOPICS = [
    "a robot who learns to paint", "a lighthouse keeper", "a dragon who is afraid of fire", "a lost cat in Paris",
    "a detective on Mars", "a chef who cannot taste", "a tree that walks", "a girl who talks to whales",
    "an old clock maker", "a city under the sea", "a time-travelling teacher", "a shy volcano",
    "a pirate who hates water", "a library that never closes", "a snowman in summer", "a quiet thunderstorm",
]  # fmt: skip
FILLER = (
    "The history of the town is long and full of small events: markets, floods, weddings, harvests, "
    "quarrels about the bridge, a school that opened and closed twice, and a clock that never kept time. "
)


def chat_messages(i: int) -> list[dict]:
    # the topic cycles every 16; the index makes each of the 32 prompts distinct
    return [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]} (story {i})."}]


def ttft_messages(i: int, filler_repeats: int) -> list[dict]:
    return [
        {"role": "user", "content": f"Document {i}. " + FILLER * filler_repeats + "Summarize the document."}
    ]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# =============================================================================================
# workers: each runs in its own process (``--worker NAME``) and writes one JSON object
# =============================================================================================


BF16_WEIGHTS = "float32, bf16 weights"


def worker_aios(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import aios

    out: dict = {"system": "aios", "version": aios.__version__, "rows": [], "ttft": [], "config": {}}
    # fp32 also with bf16-valued weights (``KernelConfig.weights``): fp32 arithmetic, half the bytes per step
    for dtype in spec["dtypes"] + ([BF16_WEIGHTS] if "float32" in spec["dtypes"] else []):
        cfg = dict(
            model="smollm2",
            dtype="float32" if dtype == BF16_WEIGHTS else dtype,
            weights="bfloat16" if dtype == BF16_WEIGHTS else "as_loaded",
            device="cpu",
            scheduler="fifo",
            max_batch_size=spec["max_batch_size"],
        )
        kernel = aios.Kernel(**cfg)
        out["config"][dtype] = {
            **cfg,
            **{
                k: v
                for k, v in kernel.config.model_dump(mode="json").items()
                if k in ("batch_invariant", "max_batch_tokens")
            },
        }
        try:
            _, load_s = _timed(lambda k=kernel: k.llm)

            def ask(messages, n_new, _k=kernel):
                def fn(m):
                    return aios.chat(m, max_new_tokens=n_new).response

                specs = [aios.AgentSpec(name=f"agent{i}", fn=fn, task=m) for i, m in enumerate(messages)]
                runs, dt = _timed(lambda: aios.run_agents(_k, specs))
                bad = [r.error for r in runs if not r.ok]
                if bad:
                    raise RuntimeError(f"aios agents failed: {bad[:2]}")
                return [r.output for r in runs], dt

            ask(spec["messages"][:1], 4)  # warm-up: first-call costs are not throughput
            ask(spec["messages"][: max(spec["agents"])], 4)
            for n in spec["agents"]:
                resps, dt = ask(spec["messages"][:n], spec["new_tokens"])
                tokens = sum(r.completion_tokens for r in resps)
                out["rows"].append(
                    {"variant": dtype, "agents": n, "tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt,
                     "prompt_tokens": [r.prompt_tokens for r in resps], "sample": resps[0].text[:80], "load_s": load_s}
                )  # fmt: skip
                _progress(f"aios {dtype} agents={n} {tokens / dt:.1f} tok/s")
            ask(spec["ttft_messages"][-1:], 1)  # warm-up at this length
            times, ptoks = [], []
            for m in spec["ttft_messages"][:-1]:
                (resps, dt) = ask([m], 1)
                times.append(dt)
                ptoks.append(resps[0].prompt_tokens)
            out["ttft"].append(
                {
                    "variant": dtype,
                    "seconds": times,
                    "median_s": statistics.median(times),
                    "prompt_tokens": ptoks,
                }
            )
            _progress(f"aios {dtype} ttft {statistics.median(times) * 1000:.0f} ms")
        finally:
            kernel.shutdown()
    return out


def worker_transformers(spec: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.set_num_threads(spec["threads"])
    out: dict = {"system": "transformers", "version": transformers.__version__, "rows": [], "ttft": []}
    prompts, pad = spec["prompts"], spec["pad_token_id"]
    for dtype in spec["dtypes"]:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=getattr(torch, dtype)).eval()
        gen = GenerationConfig(
            max_new_tokens=spec["new_tokens"],
            do_sample=False,
            eos_token_id=spec["eos_token_id"],
            pad_token_id=pad,
        )

        def generate(batch: list[list[int]], cfg=gen, _m=model) -> int:
            width = max(len(p) for p in batch)  # left padding, as generate wants for decoder-only models
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            with torch.inference_mode():
                res = _m.generate(ids, attention_mask=mask, generation_config=cfg)
            new = res[:, width:]
            return int(sum(((row != pad) & (row != -1)).sum() for row in new))

        generate(prompts[:1], GenerationConfig(max_new_tokens=2, do_sample=False, pad_token_id=pad))
        # one after another: the rate does not depend on how many wait, so two requests are timed
        seq = [_timed(lambda p=p: generate([p])) for p in prompts[:2]]
        tokens, dt = sum(t for t, _ in seq), sum(d for _, d in seq)
        for n in spec["agents"]:
            out["rows"].append({"variant": f"{dtype} sequential", "agents": n, "tokens": tokens, "seconds": dt,
                                "tok_per_s": tokens / dt, "requests_timed": 2})  # fmt: skip
        _progress(f"transformers {dtype} sequential {tokens / dt:.1f} tok/s")
        for n in [a for a in spec["agents"] if a > 1]:
            tokens, dt = _timed(lambda n=n: generate(prompts[:n]))
            out["rows"].append(
                {
                    "variant": f"{dtype} padded batch",
                    "agents": n,
                    "tokens": tokens,
                    "seconds": dt,
                    "tok_per_s": tokens / dt,
                }
            )
            _progress(f"transformers {dtype} padded agents={n} {tokens / dt:.1f} tok/s")
        one = GenerationConfig(max_new_tokens=1, do_sample=False, pad_token_id=pad)
        generate([spec["ttft_prompts"][-1]], one)
        times = [_timed(lambda p=p, c=one: generate([p], c))[1] for p in spec["ttft_prompts"][:-1]]
        out["ttft"].append({"variant": dtype, "seconds": times, "median_s": statistics.median(times)})
        del model
    return out


def worker_vllm(spec: dict) -> dict:
    """Runs under the vLLM side virtualenv: standard library and vLLM only."""
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    out: dict = {"system": "vllm", "version": vllm.__version__, "torch": torch.__version__, "rows": [], "ttft": [],
                 "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "OMP_"))}}  # fmt: skip

    def as_inputs(prompts):
        return [{"prompt_token_ids": p} for p in prompts]

    def measure(llm, dtype: str, load_s: float) -> None:
        greedy = SamplingParams(temperature=0.0, max_tokens=spec["new_tokens"])
        llm.generate(
            as_inputs(spec["prompts"][: max(spec["agents"])]),
            SamplingParams(temperature=0.0, max_tokens=4),
            use_tqdm=False,
        )
        for n in spec["agents"]:
            res, dt = _timed(lambda n=n: llm.generate(as_inputs(spec["prompts"][:n]), greedy, use_tqdm=False))
            tokens = sum(len(r.outputs[0].token_ids) for r in res)
            out["rows"].append({"variant": f"{dtype} offline", "agents": n, "tokens": tokens, "seconds": dt,
                                "tok_per_s": tokens / dt, "sample": res[0].outputs[0].text[:80], "load_s": load_s})  # fmt: skip
            _progress(f"vllm {dtype} agents={n} {tokens / dt:.1f} tok/s")
        one = SamplingParams(temperature=0.0, max_tokens=1)
        llm.generate(as_inputs(spec["ttft_prompts"][-1:]), one, use_tqdm=False)
        times = [
            _timed(lambda p=p: llm.generate(as_inputs([p]), one, use_tqdm=False))[1]
            for p in spec["ttft_prompts"][:-1]
        ]
        out["ttft"].append(
            {"variant": f"{dtype} offline", "seconds": times, "median_s": statistics.median(times)}
        )
        _progress(f"vllm {dtype} ttft {statistics.median(times) * 1000:.0f} ms")

    for dtype in spec["dtypes"]:  # the parent runs one process per dtype: one engine per process
        (llm, load_s) = _timed(lambda dtype=dtype: LLM(model=spec["model_dir"], dtype=dtype, max_model_len=2048,
                                                       enable_prefix_caching=False, seed=0, max_num_seqs=spec["max_batch_size"]))  # fmt: skip
        measure(llm, dtype, load_s)
    return out


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_llamacpp(spec: dict) -> dict:
    """Drives the built binaries: ``llama-server`` with parallel slots, then ``llama-batched-bench``."""
    bindir, gguf, threads = Path(spec["llama_bin"]), spec["gguf"], str(spec["threads"])
    ver = subprocess.run(
        [str(bindir / "llama-server"), "--version"], capture_output=True, text=True, timeout=60
    )
    version = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in (ver.stdout + ver.stderr).splitlines()
            if ln.startswith("version:")
        ),
        "?",
    )
    out: dict = {
        "system": "llama.cpp",
        "version": version,
        "rows": [],
        "ttft": [],
        "weights": "Q4_1 GGUF (embedded)",
    }
    slots = max(spec["agents"])
    per_slot = 1024  # covers the 512-token prompt and the chat prompts + 64 new tokens
    port = _free_port()
    cmd = [str(bindir / "llama-server"), "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-c", str(slots * per_slot), "-t", threads, "-tb", threads, "--no-webui"]  # fmt: skip
    log = open(spec["log_dir"] + "/llama-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("llama-server did not become healthy in 120 s")
            time.sleep(0.5)

        def complete(ids: list[int], n_new: int) -> dict:
            body = {
                "prompt": ids,
                "n_predict": n_new,
                "temperature": 0.0,
                "top_k": 1,
                "cache_prompt": False,
                "seed": 0,
            }
            return _post(url + "/completion", body)

        def concurrent(prompts: list[list[int]], n_new: int) -> tuple[list[dict], float]:
            results: list = [None] * len(prompts)

            def one(i: int) -> None:
                results[i] = complete(prompts[i], n_new)

            threads_ = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
            t0 = time.perf_counter()
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()
            return results, time.perf_counter() - t0

        concurrent(spec["prompts"][:slots], 4)  # warm-up
        for n in spec["agents"]:
            res, dt = concurrent(spec["prompts"][:n], spec["new_tokens"])
            tokens = sum(int(r["tokens_predicted"]) for r in res)
            out["rows"].append({"variant": "server Q4_1", "agents": n, "tokens": tokens, "seconds": dt, "tok_per_s": tokens / dt,
                                "sample": res[0]["content"][:80]})  # fmt: skip
            _progress(f"llama-server agents={n} {tokens / dt:.1f} tok/s")
        complete(spec["ttft_prompts"][-1], 1)
        times, prompt_ms = [], []
        for p in spec["ttft_prompts"][:-1]:
            r, dt = _timed(lambda p=p: complete(p, 1))
            times.append(dt)
            prompt_ms.append(r.get("timings", {}).get("prompt_ms"))
        out["ttft"].append(
            {
                "variant": "server Q4_1",
                "seconds": times,
                "median_s": statistics.median(times),
                "server_prompt_ms": prompt_ms,
            }
        )
        _progress(f"llama-server ttft {statistics.median(times) * 1000:.0f} ms")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    # batched-bench: synthetic prompts of the chat prompts' median length, decode measured apart
    npp = sorted(len(p) for p in spec["prompts"])[len(spec["prompts"]) // 2]
    npl = ",".join(str(n) for n in spec["agents"])
    cmd = [str(bindir / "llama-batched-bench"), "-m", gguf, "-c", str(slots * (npp + spec["new_tokens"]) + 64),
           "-b", "2048", "-ub", "512", "-npp", str(npp), "-ntg", str(spec["new_tokens"]), "-npl", npl,
           "-t", threads, "-tb", threads, "--output-format", "jsonl"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    out["batched_bench_cmd"] = " ".join(cmd[1:])
    parsed = []
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pass
    if res.returncode != 0 or not parsed:
        out["batched_bench_error"] = (res.stdout + res.stderr)[-2000:]
    for rec in parsed:
        b, tg = int(rec["pl"]), int(rec["tg"])
        total_s = float(rec["t"])
        out["rows"].append({"variant": "batched-bench Q4_1", "agents": b, "tokens": b * tg, "seconds": total_s,
                            "tok_per_s": b * tg / total_s, "decode_tok_per_s": float(rec["speed_tg"]), "raw": rec})  # fmt: skip
        _progress(
            f"llama-batched-bench B={b} {b * tg / total_s:.1f} tok/s (decode {float(rec['speed_tg']):.1f})"
        )
    return out


WORKERS = {
    "aios": worker_aios,
    "transformers": worker_transformers,
    "vllm": worker_vllm,
    "llama.cpp": worker_llamacpp,
}


def _progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =============================================================================================
# the parent: roofline, inputs, one subprocess per system, summary
# =============================================================================================


def roofline(threads: int) -> dict:
    """GEMM GFLOP/s (bf16, fp32) and memory copy GB/s with torch on ``threads`` threads.

    Each dtype is probed once at 1024x1024 first: where the CPU has no bf16 instructions (measured:
    an AVX2-only AMD EPYC VM, ~1 GFLOP/s) torch falls back to a slow path, and the 2048x2048 best
    of 5 would take minutes; the probe's figure is then the measurement.
    """
    import torch

    torch.set_num_threads(threads)
    out: dict = {"threads": threads}
    for dtype in ("bfloat16", "float32"):
        dt = getattr(torch, dtype)
        a, b = torch.randn(1024, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)
        probe = 2 * 1024**3 / _timed(lambda a=a, b=b: torch.mm(a, b))[1] / 1e9
        if probe < 20:
            out[f"gemm_{dtype}_gflops"], out[f"gemm_{dtype}_size"] = probe, 1024
            continue
        n = 2048
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        torch.mm(a, b)
        best = min(_timed(lambda a=a, b=b: torch.mm(a, b))[1] for _ in range(5))
        out[f"gemm_{dtype}_gflops"], out[f"gemm_{dtype}_size"] = 2 * n**3 / best / 1e9, n
    src = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src))[1] for _ in range(5))
    out["copy_gb_s"] = 2 * src.numel() * 4 / best / 1e9  # bytes read + bytes written
    out["copy_definition"] = "(bytes read + bytes written) / time, 256 MiB fp32 tensor.copy_"
    return out


def default_dtypes(flags: set[str]) -> tuple[list[str], str]:
    """fp32 always; bf16 where the CPU computes it natively (AMX or AVX512-BF16)."""
    if flags & {"amx_bf16", "avx512_bf16"}:
        return ["float32", "bfloat16"], "bf16 instructions present (amx_bf16/avx512_bf16)"
    return [
        "float32"
    ], "bf16 left out: this CPU has no bf16 instructions (no amx_bf16/avx512_bf16), torch emulates it"


def _cpu_name() -> str:
    try:
        return next(
            ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        return "?"


def model_facts(model_dir: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    # every weight is a matmul operand once per token, except the input embedding (a lookup) when
    # it is not also the output head
    matmul = params - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    return {"params": params, "gflop_per_token": 2 * matmul / 1e9, "bf16_weight_bytes": 2 * params}


def prepare_inputs(args, tok) -> dict:
    def ids(messages):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    n = max(args.agents)
    messages = [chat_messages(i) for i in range(n)]
    repeats = 1
    while len(ids(ttft_messages(0, repeats + 1))) <= args.ttft_tokens:
        repeats += 1
    # args.ttft_reps timed prompts plus one (the last) for warm-up; each differs from the first token on
    ttft_msgs = [ttft_messages(i, repeats) for i in range(args.ttft_reps + 1)]
    return {
        "messages": messages,
        "prompts": [ids(m) for m in messages],
        "ttft_messages": ttft_msgs,
        "ttft_prompts": [ids(m) for m in ttft_msgs],
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }


def run_system(name: str, python: str, spec: dict, workdir: Path, timeout: float, tag: str = "") -> dict:
    """One system in its own subprocess; its progress lines are shown, its whole output kept."""
    stem = f"{name}{'-' + tag if tag else ''}"
    spec_path, out_path = workdir / f"{stem}.spec.json", workdir / f"{stem}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if name == "vllm":
        # vLLM-CPU reserves one core for its scheduler process by default and binds its OpenMP
        # threads to the rest: on 2 cores that is 1 compute thread. Reserve none, so it computes
        # on the same 2 threads as everyone else (its scheduler process then shares them).
        env.update(VLLM_CPU_KVCACHE_SPACE="2", VLLM_LOGGING_LEVEL="WARNING", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        env.pop("PYTHONPATH", None)  # the side env must not see the aios checkout's packages
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--spec",
        str(spec_path),
        "--out",
        str(out_path),
    ]
    print(f"== {name}: {' '.join(cmd[:2])} ...", flush=True)
    t0 = time.perf_counter()
    with open(workdir / f"{stem}.log", "w") as log:
        # its own process group, so a timeout also ends what it spawned (vLLM's engine core)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = -1
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    wall = time.perf_counter() - t0
    text = (workdir / f"{stem}.log").read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("  ["):
            print(line, flush=True)
    if rc != 0 or not out_path.exists():
        return {
            "system": name,
            "error": f"exit status {rc} after {wall:.0f}s",
            "log_tail": text[-3000:],
            "rows": [],
            "ttft": [],
        }
    res = json.loads(out_path.read_text())
    res["wall_s"] = wall
    return res


def summarize(data: dict) -> dict:
    """Ratios against the issue's targets (aios's best variant vs the best peer figure at each count)."""
    rows = [dict(r, system=s["system"]) for s in data["systems"] for r in s.get("rows", [])]
    best = {}
    for r in rows:
        key = (r["system"], r["agents"])
        if key not in best or r["tok_per_s"] > best[key]["tok_per_s"]:
            best[key] = r
    gflop = data["model"]["gflop_per_token"]
    bf16_roof = data["roofline"]["gemm_bfloat16_gflops"] / gflop
    # the compute roof of the fastest dtype: bf16 where the CPU has AMX, fp32 on an AVX2-only CPU
    roof_tok_s = max(bf16_roof, data["roofline"]["gemm_float32_gflops"] / gflop)
    out: dict = {
        "bf16_roof_tok_per_s": bf16_roof,
        "compute_roof_tok_per_s": roof_tok_s,
        "by_agents": {},
        "targets": {},
    }
    for n in data["agents"]:
        a = best.get(("aios", n))
        peers = [best[(p, n)] for p in ("vllm", "llama.cpp") if (p, n) in best]
        bp = max(peers, key=lambda r: r["tok_per_s"]) if peers else None
        out["by_agents"][n] = {
            "aios_tok_per_s": a and a["tok_per_s"],
            "aios_variant": a and a["variant"],
            "best_peer": bp and f"{bp['system']} {bp['variant']}",
            "best_peer_tok_per_s": bp and bp["tok_per_s"],
            "aios_vs_best_peer": (a["tok_per_s"] / bp["tok_per_s"]) if a and bp else None,
            "aios_pct_of_bf16_roof": (100 * a["tok_per_s"] / bf16_roof) if a else None,
            "aios_pct_of_compute_roof": (100 * a["tok_per_s"] / roof_tok_s) if a else None,
        }
    t = out["targets"]
    for n in (8, 16, 32):
        r = out["by_agents"].get(n, {}).get("aios_vs_best_peer")
        if r is not None:
            t[f"{n}_agents_vs_best_peer>=1.5"] = {"value": r, "met": r >= 1.5}
    roof32 = out["by_agents"].get(32, {}).get("aios_pct_of_compute_roof")
    if roof32 is not None:
        t["32_agents_pct_of_compute_roof>=25"] = {"value": roof32, "met": roof32 >= 25}
    a1 = out["by_agents"].get(1, {}).get("aios_tok_per_s")
    llama1 = best.get(("llama.cpp", 1))
    if a1 and llama1:
        t["1_agent_vs_llama.cpp>=0.5"] = {"value": a1 / llama1["tok_per_s"], "met": a1 / llama1["tok_per_s"] >= 0.5,
                                          "llama_variant": llama1["variant"]}  # fmt: skip
    ttft = {
        s["system"]: min((x["median_s"] for x in s.get("ttft", [])), default=None) for s in data["systems"]
    }
    if ttft.get("aios") and ttft.get("vllm"):
        t["ttft_512_vs_vllm<=1.0"] = {
            "value": ttft["aios"] / ttft["vllm"],
            "met": ttft["aios"] <= ttft["vllm"],
        }
    out["ttft_best_s"] = ttft
    return out


def render_markdown(data: dict) -> str:
    agents = data["agents"]
    lines = [
        "# LLM throughput and latency: aios vs peers (SmolLM2-135M, CPU)",
        "",
        f"Run {data['machine']['time']}, {data['machine']['cpu_count']} CPUs, {data['threads']} threads per system, "
        f"load average at start {', '.join(f'{x:.2f}' for x in data['machine']['loadavg_at_start'])}"
        + (
            " (**the machine was shared: every figure, the roofline included, is lower than on a quiet"
            " machine, so the % of roof is not meaningful**)"
            if data["machine"]["loadavg_at_start"][0] > 1.5
            else ""
        )
        + f". Greedy, {data['new_tokens']} new tokens, the same chat prompts; TTFT: a {data['ttft_prompt_tokens']}-token prompt, 1 new token, median.",
        "",
        f"Roofline (torch, {data['threads']} threads): bf16 GEMM {data['roofline']['gemm_bfloat16_gflops']:.0f} GFLOP/s, "
        f"fp32 GEMM {data['roofline']['gemm_float32_gflops']:.0f} GFLOP/s, copy {data['roofline']['copy_gb_s']:.1f} GB/s; "
        f"{data['model']['gflop_per_token']:.3f} GFLOP/token, so the compute roof is {data['summary']['compute_roof_tok_per_s']:.0f} tok/s "
        f"(bf16: {data['summary']['bf16_roof_tok_per_s']:.0f} tok/s). CPU: {data['machine'].get('cpu', '?')}; {data.get('dtypes_note', '')}.",
        "",
        "| system | variant | " + " | ".join(f"{n} req tok/s" for n in agents) + " | TTFT ms |",
        "|---|---|" + "---|" * (len(agents) + 1),
    ]
    for s in data["systems"]:
        if s.get("error") or s.get("missing"):
            lines.append(
                f"| {s['system']} | — | "
                + " | ".join("—" for _ in agents)
                + f" | {s.get('missing') or s.get('error')} |"
            )
            continue
        variants = list(dict.fromkeys(r["variant"] for r in s["rows"]))
        ttft = {x["variant"]: x["median_s"] for x in s["ttft"]}
        for v in variants:
            cells = []
            for n in agents:
                r = next((r for r in s["rows"] if r["variant"] == v and r["agents"] == n), None)
                cells.append(f"{r['tok_per_s']:.1f}" if r else "—")
            t = ttft.get(v, ttft.get(v.split()[0]))
            ttft_cell = (
                f"{t * 1000:.0f}"
                if t is not None and v.split()[-1] != "batch" and "batched" not in v
                else "—"
            )
            lines.append(
                f"| {s['system']} {s.get('version', '')} | {v} | " + " | ".join(cells) + f" | {ttft_cell} |"
            )
    lines += ["", "## Against the issue's targets", "", "| target | value | met |", "|---|---|---|"]
    for name, t in data["summary"]["targets"].items():
        lines.append(f"| {name} | {t['value']:.2f} | {'yes' if t['met'] else 'no'} |")
    lines += [
        "",
        "| requests | aios (best variant) | best peer | aios / best peer | aios % of compute roof |",
        "|---|---|---|---|---|",
    ]
    for n, b in data["summary"]["by_agents"].items():
        if b["aios_tok_per_s"] is None:
            continue
        ratio = f"{b['aios_vs_best_peer']:.2f}" if b["aios_vs_best_peer"] is not None else "—"
        peer = f"{b['best_peer_tok_per_s']:.1f} ({b['best_peer']})" if b["best_peer"] else "—"
        lines.append(
            f"| {n} | {b['aios_tok_per_s']:.1f} ({b['aios_variant']}) | {peer} | {ratio} | {b['aios_pct_of_compute_roof']:.1f}% |"
        )
    lines += ["", "Peers: " + "; ".join(f"{k}: {v['detail']}" for k, v in data["peers"].items()), ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [2, 1]})
    for s in data["systems"]:
        for v in dict.fromkeys(r["variant"] for r in s.get("rows", [])):
            pts = sorted((r["agents"], r["tok_per_s"]) for r in s["rows"] if r["variant"] == v)
            style = "-" if s["system"] == "aios" else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{s['system']} {v}")
    roof = data["summary"]["compute_roof_tok_per_s"]
    ax.axhline(
        roof * 0.25, color="grey", lw=0.8, ls=":", label=f"25% of the compute roof ({roof * 0.25:.0f} tok/s)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(data["agents"], [str(a) for a in data["agents"]])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title(f"SmolLM2-135M, {data['threads']} CPU threads, greedy, {data['new_tokens']} new tokens")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    labels, values = [], []
    for s in data["systems"]:
        for x in s.get("ttft", []):
            labels.append(f"{s['system']}\n{x['variant']}")
            values.append(x["median_s"] * 1000)
    bx.barh(labels, values, color="tab:blue")
    bx.set_xlabel(f"time to first token, {data['ttft_prompt_tokens']}-token prompt (ms)")
    bx.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_results(data: dict, name: str) -> str:
    """results/NAME.{json,md,png} from what has been measured so far; returns the markdown."""
    data["summary"] = summarize(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    md = render_markdown(data)
    (RESULTS / f"{name}.md").write_text(md)
    plot(data, RESULTS / f"{name}.png")
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument(
        "--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}"
    )
    ap.add_argument("--agents", default="1,8,16,32", help="concurrent request counts")
    ap.add_argument(
        "--dtypes",
        default="auto",
        help="for aios, vLLM and transformers; auto: float32, plus bfloat16 if the CPU has bf16",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ttft-tokens", type=int, default=512)
    ap.add_argument("--ttft-reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per system")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--name", default="llm", help="results/NAME.{json,md,png}")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.out).write_text(json.dumps(WORKERS[args.worker](spec)))
        return 0

    loadavg = os.getloadavg()  # first, before we add load ourselves
    args.agents = sorted({int(x) for x in args.agents.split(",")})
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown system(s) {sorted(unknown)}; choose from {SYSTEMS}")
    import platform
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from aios.bench import peers
    from aios.kernel.llm import locate_embedded_gguf, model_dir

    flags = peers.cpu_flags()
    if args.dtypes == "auto":
        dtypes, dtypes_note = default_dtypes(flags)
    else:
        dtypes, dtypes_note = args.dtypes.split(","), "dtypes chosen on the command line"
    mdir = str(model_dir("smollm2", args.cache_dir))
    tok = AutoTokenizer.from_pretrained(mdir)
    inputs = prepare_inputs(args, tok)
    print(f"load average at start: {loadavg}; measuring the roofline ({args.threads} threads)...", flush=True)
    roof = roofline(args.threads)
    print("  " + ", ".join(f"{k} {v:.1f}" for k, v in roof.items() if isinstance(v, float)), flush=True)
    pst = peers.status(args.cache_dir)
    data: dict = {
        "benchmark": "llm",
        "model": {"name": "SmolLM2-135M-Instruct (embedded)", "dir": mdir, **model_facts(mdir)},
        "agents": args.agents,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "dtypes": dtypes,
        "dtypes_note": dtypes_note,
        "ttft_prompt_tokens": len(inputs["ttft_prompts"][0]),
        "chat_prompt_tokens": [len(p) for p in inputs["prompts"]],
        "machine": {
            "cpu": _cpu_name(),
            "cpu_flags_seen": sorted(flags & {"amx_bf16", "avx512_bf16", "avx512f", "avx2"}),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": loadavg,
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },  # fmt: skip
        "roofline": roof,
        "peers": {k: v.to_dict() for k, v in pst.items()},
        "systems": [],
    }
    base = {**inputs, "agents": args.agents, "new_tokens": args.new_tokens, "threads": args.threads,
            "dtypes": data["dtypes"], "max_batch_size": max(args.agents), "model_dir": mdir}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_llm-") as tmp:
        work = Path(tmp)
        for name in [s for s in SYSTEMS if s in only]:
            spec, python = dict(base, log_dir=tmp), sys.executable
            pst = peers.status(args.cache_dir)  # again: an install may have finished meanwhile
            data["peers"] = {k: v.to_dict() for k, v in pst.items()}
            if name == "vllm":
                if not pst["vllm-cpu"].installed:
                    print(f"== vllm: {pst['vllm-cpu'].detail}", flush=True)
                    data["systems"].append(
                        {"system": "vllm", "missing": pst["vllm-cpu"].detail, "rows": [], "ttft": []}
                    )
                    continue
                python = pst["vllm-cpu"].path
            if name == "llama.cpp":
                if not pst["llama.cpp"].installed:
                    print(f"== llama.cpp: {pst['llama.cpp'].detail}", flush=True)
                    data["systems"].append(
                        {"system": "llama.cpp", "missing": pst["llama.cpp"].detail, "rows": [], "ttft": []}
                    )
                    continue
                spec.update(llama_bin=pst["llama.cpp"].path, gguf=str(locate_embedded_gguf("smollm2")))
            if name == "vllm":  # one engine per process: vLLM's engine core does not start twice cleanly
                parts = [
                    run_system(name, python, dict(spec, dtypes=[d]), work, args.timeout, tag=d)
                    for d in spec["dtypes"]
                ]
                res = {
                    **parts[0],
                    "rows": [r for p in parts for r in p["rows"]],
                    "ttft": [t for p in parts for t in p["ttft"]],
                }
                errors = [p["error"] for p in parts if p.get("error")]
                if errors:
                    res.update(
                        error="; ".join(errors), log_tail="\n".join(p.get("log_tail", "") for p in parts)
                    )
            else:
                res = run_system(name, python, spec, work, args.timeout)
            if res.get("error"):
                print(f"  {name} failed: {res['error']}\n{res['log_tail'][-1500:]}", flush=True)
            data["systems"].append(res)
            write_results(data, args.name)  # partial results survive a later system's failure
    md = write_results(data, args.name)
    print()
    print(md)
    print(f"wrote {RESULTS / args.name}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
