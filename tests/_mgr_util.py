"""Helpers for the manager tests (memory, storage, tools, access, load). Not a conftest on purpose.

- ``make_kernel``: a kernel with the *hashing* embedder (instant, no semantics) for tests that
  check plumbing, quotas and access rather than retrieval quality.
- ``minilm``: one MiniLM embedder per test session, shared by the tests that need real semantics
  (set as ``kernel.modules["storage"].embedder`` before first use).
- ``TinyCore``: a minimal LLM core around a 2-layer random Llama (real forward passes, greedy,
  one request per step) for load tests, until the engine's ``tiny_kernel`` fixture is used.
"""

from __future__ import annotations

import functools
import threading
from collections import deque

import aios
from aios.kernel.embedding import MiniLMEmbedder
from aios.kernel.syscall import LLMResponse, LLMSyscall


@functools.cache
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def make_kernel(tmp_path, **overrides) -> aios.Kernel:
    overrides.setdefault("embedder", "hash")
    return aios.Kernel(data_dir=tmp_path / "data", **overrides)


def admin(kernel: aios.Kernel, name: str = "root") -> str:
    kernel.modules["access"].set_group(name, "admin")
    return name


class TinyCore:
    """Greedy decoding on a tiny random Llama; bytes in, token ids mod vocab out."""

    def __init__(self, vocab: int = 256):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        )  # fmt: skip
        self.model = LlamaForCausalLM(cfg).eval()
        self.vocab = vocab
        self._queue: deque[LLMSyscall] = deque()
        self._lock = threading.Lock()
        self.served = 0

    def add(self, syscall: LLMSyscall) -> None:
        with self._lock:
            self._queue.append(syscall)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def step(self) -> bool:
        import torch

        with self._lock:
            if not self._queue:
                return False
            sc = self._queue.popleft()
        sc.mark_running()
        text = " ".join(m.content for m in sc.request.messages)
        ids = torch.tensor([[b % self.vocab for b in text.encode()[-200:]] or [0]])
        out: list[int] = []
        with torch.no_grad():
            for _ in range(min(sc.request.max_new_tokens, 16)):
                nxt = int(self.model(ids).logits[0, -1].argmax())
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        self.served += 1
        sc.complete(
            LLMResponse(
                text=bytes(t % 128 for t in out).decode("ascii", "replace"),
                token_ids=out,
                finish_reason="length",
                prompt_tokens=int(ids.shape[1]) - len(out),
                completion_tokens=len(out),
            )
        )
        return True

    def close(self) -> None:
        pass
