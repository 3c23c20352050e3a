"""Embeddings: the local model by default, an OpenAI-compatible API by configuration.

Both implement ``Embedder``: ``embed(texts)`` returns one unit-length float32 vector
per text, in order, batched and cached (an LRU of ``[context].context_cache_size``
texts). There is no fallback: when the configured provider cannot embed, the call
fails with a typed error; nothing is ever stored with a made-up vector. Every vector
is checked against ``dimension`` (the collections' size) before it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_common.errors import ConfigError, DeadlineExceededError, FailedPreconditionError, InvalidArgumentError
from symbi_context.minilm import MODEL_NAME, Matrix, MiniLM
from symbi_context.openai_api import OpenAICompatible

log = logging.getLogger(__name__)

LOCAL_BATCH = 32
REMOTE_BATCH = 256


class Embedder(Protocol):
    model: str
    dimension: int

    async def embed(self, texts: Sequence[str]) -> Matrix: ...


class EmbeddingMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.texts = Counter(
            "symbi_context_embedded_texts", "Texts embedded, by cache outcome", ["cache"], registry=registry
        )
        self.latency = Histogram(
            "symbi_context_embedding_seconds",
            "Time to embed one batch",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )


class VectorCache:
    """The last ``size`` texts' vectors, keyed by a hash of the text."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, Matrix] = OrderedDict()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def get(self, key: bytes) -> Matrix | None:
        vector = self._entries.get(key)
        if vector is not None:
            self._entries.move_to_end(key)
        return vector

    def put(self, key: bytes, vector: Matrix) -> None:
        if self.size <= 0:
            return
        self._entries[key] = vector
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _CachedEmbedder:
    """Cache, batching and checks around a provider's ``_compute``."""

    model: str
    dimension: int
    batch: int

    def __init__(self, cache_size: int, timeout_s: float, metrics: EmbeddingMetrics) -> None:
        self.cache = VectorCache(cache_size)
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def _compute(self, texts: list[str]) -> Matrix:
        raise NotImplementedError

    async def embed(self, texts: Sequence[str]) -> Matrix:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for row, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgumentError(f"text {row} is empty: there is nothing to embed")
            key = VectorCache.key(text)
            cached = self.cache.get(key)
            if cached is not None:
                out[row] = cached
            else:
                missing.setdefault(key, []).append(row)
        self.metrics.texts.labels("hit").inc(len(texts) - sum(len(rows) for rows in missing.values()))
        self.metrics.texts.labels("miss").inc(sum(len(rows) for rows in missing.values()))
        keys = list(missing)
        # Similar lengths side by side: less padding in each batch.
        keys.sort(key=lambda k: len(texts[missing[k][0]]))
        for start in range(0, len(keys), self.batch):
            chunk = keys[start : start + self.batch]
            with self.metrics.latency.time():
                try:
                    vectors = await asyncio.wait_for(
                        self._compute([texts[missing[k][0]] for k in chunk]), self.timeout_s
                    )
                except TimeoutError:
                    raise DeadlineExceededError(f"embedding {len(chunk)} texts took over {self.timeout_s}s") from None
            self._check(vectors, len(chunk))
            for key, vector in zip(chunk, vectors, strict=True):
                self.cache.put(key, vector)
                for row in missing[key]:
                    out[row] = vector
        return out

    def _check(self, vectors: Matrix, count: int) -> None:
        if vectors.shape != (count, self.dimension):
            raise FailedPreconditionError(
                f"{self.model} returned vectors of shape {vectors.shape}; the collections hold {self.dimension} "
                f"dimensions ([context].embedding_dimension)"
            )
        if not np.isfinite(vectors).all():
            raise FailedPreconditionError(f"{self.model} returned a vector with NaN or infinite values")


class LocalEmbedder(_CachedEmbedder):
    """all-MiniLM-L6-v2 in this process (one worker thread: the matrix products use every core)."""

    batch = LOCAL_BATCH

    def __init__(self, model: MiniLM, *, cache_size: int, timeout_s: float, metrics: EmbeddingMetrics) -> None:
        super().__init__(cache_size, timeout_s, metrics)
        self.encoder = model
        self.model = MODEL_NAME
        self.dimension = model.dimension
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    async def _compute(self, texts: list[str]) -> Matrix:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.encoder.encode, texts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RemoteEmbedder(_CachedEmbedder):
    """An OpenAI-compatible embeddings API; vectors are normalised to unit length."""

    batch = REMOTE_BATCH

    def __init__(
        self,
        api: OpenAICompatible,
        model: str,
        dimension: int,
        *,
        cache_size: int,
        timeout_s: float,
        metrics: EmbeddingMetrics,
    ) -> None:
        super().__init__(cache_size, timeout_s, metrics)
        self.api = api
        self.model = model
        self.dimension = dimension

    async def _compute(self, texts: list[str]) -> Matrix:
        rows = await self.api.embeddings(self.model, texts)
        if any(len(row) != self.dimension for row in rows):
            sizes = sorted({len(row) for row in rows})
            raise FailedPreconditionError(
                f"{self.model} returned {sizes} dimensions; the collections hold {self.dimension} "
                f"([context].embedding_dimension)"
            )
        vectors = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise FailedPreconditionError(f"{self.model} returned an all-zero vector")
        unit: Matrix = vectors / norms
        return unit


def check_local_dimension(model: MiniLM, configured: int) -> None:
    if model.dimension != configured:
        raise ConfigError(
            f"[context].embedding_dimension is {configured} but {MODEL_NAME} makes {model.dimension}-dimension "
            f"vectors; set it to {model.dimension} (or choose another provider)"
        )
