"""The kernel's configuration, in its own module.

Why a module of its own: the LLM core (``engine.py``, ``remote.py``) and the model loader
(``llm.py``) are built *from* a config, and the kernel builds *them*. With the config inside
``kernel.py`` those lower layers had to import the kernel (a cycle engine -> kernel -> llm ->
engine). Now every layer imports this leaf module, and the kernel sits on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KernelConfig(BaseModel):
    """Everything a kernel is built from. Defaults run the embedded SmolLM2 on the CPU."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "smollm2",
        description="'smollm2' (embedded default), a local path or hub name of a causal LM, "
        "or 'openai:<base_url>#<model>' for an OpenAI-compatible server",
    )
    device: str = "auto"
    dtype: str = Field(
        "auto",
        description="'auto' (bf16 where the CPU has AMX/AVX512-BF16 or on a GPU, else float32), "
        "'float32', 'bfloat16', ...",
    )
    weights: Literal["as_loaded", "bfloat16"] = Field(
        "as_loaded",
        description="'bfloat16': round a float32 model's weights to bf16 values at load. Arithmetic stays "
        "float32; the CPU matmul then stores them in bf16, halving the bytes a decode step reads "
        "(about 1.7x a lone agent's tokens/s on a 2-core AVX2 EPYC). The model is the rounded one for "
        "every caller, so outputs stay exact against it",
    )
    scheduler: Literal["fifo", "rr", "priority", "sjf", "las"] = "rr"
    quantum: int = Field(
        8, ge=1, description="round-robin time slice, in generated tokens; las: the service of its first level"
    )
    aging: float = Field(1.0, ge=0.0, description="priority policy: priority points gained per second waited")
    max_wait: float = Field(
        30.0, gt=0.0, description="las policy: a call that waited this many seconds runs ahead of the rest"
    )
    max_batch_size: int = Field(8, ge=1, description="rows (beams count) in one decode step")
    max_batch_tokens: int = Field(4096, ge=16, description="tokens (prefill + decode) in one step")
    batch_invariant: bool = Field(
        True,
        description="run every decode step at max_batch_size rows so a request's tokens do not depend "
        "on who shares its batch (exact outputs under any schedule); off is faster for small batches",
    )
    kv_memory_budget_mb: float = Field(
        2048, ge=0, description="CPU memory for suspended KV caches; past it, disk"
    )
    spill_dir: Path | None = None
    state_dir: Path | None = Field(
        None,
        description="durable state: LLM syscalls are journaled here and resume after a restart, even a "
        "SIGKILL (see aios/kernel/journal.py); None keeps them in memory only",
    )
    kv_reuse: bool = Field(
        True,
        description="keep each agent's prompt KV after a call; its next call that starts with the same "
        "tokens prefills only the rest (never across agents; outputs unchanged)",
    )
    kv_retain_mb: float = Field(1024, ge=0, description="memory for retained conversation KV; past it, disk")
    kv_retain_disk_mb: float = Field(4096, ge=0, description="disk for retained conversation KV; past it, dropped")
    kv_retain_s: float = Field(
        600, gt=0, description="retained conversation KV idle this long is dropped (an agent that never returns)"
    )
    context_policy: Literal["truncate", "summarize"] = "truncate"
    data_dir: Path | None = Field(None, description="where storage lives; a temporary directory when None")
    cache_dir: Path | None = Field(None, description="model cache; ~/.cache/aios when None")
    workers: int = Field(8, ge=1, description="threads serving non-LLM syscalls")
    history_limit: int = Field(
        100_000, ge=1, description="syscalls the kernel keeps for history()/metrics(), oldest dropped first"
    )
    storage_url: str | None = Field(
        None, description="chromadb server URL (e.g. http://127.0.0.1:8000); embedded when None"
    )
    embedder: str = Field(
        "minilm", description="'minilm' (offline all-MiniLM-L6-v2) or 'hash[:dim]' (tests only)"
    )
    memory_quota_kb: int = Field(1024, ge=1, description="per-agent memory quota")
    storage_quota_mb: float = Field(64, gt=0, description="per-agent storage quota: items, files and logs")
    storage_quota_objects: int = Field(10_000, ge=1, description="per-agent storage quota: items + files")
    memory_budget_mb: float = Field(
        64, gt=0, description="resident agent memory, kernel-wide; past it, LRU items go to storage"
    )

