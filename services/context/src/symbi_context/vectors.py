"""Qdrant collections of context items: one per memory kind, through ``qdrant-client``.

``[context].vector_db_url`` (``QDRANT_URL``) names a Qdrant server; when it is empty
the client runs in local mode on disk under ``[context].vector_db_path`` (default
``<state_dir>/qdrant``). The code is the same for both. Collections are
``<prefix>_long_term``, ``<prefix>_working`` and ``<prefix>_shared_knowledge``
(short-term memory lives in Redis), with cosine distance, HNSW m=16 and
ef_construct=200, and keyword/float payload indexes on the filtered fields.

Local-mode caveats (measured in ``benchmarks/context.py``): search is exact brute
force in numpy (the HNSW settings are stored, not used) with filters evaluated in
Python, so its latency grows linearly with the collection; payload indexes are
accepted and ignored; every point written is its own SQLite transaction; the
directory is locked by one process. A Qdrant server has none of these limits.

All client calls run on worker threads (one for local mode, whose SQLite
connection and in-memory collections are not shared across threads safely), each
bounded by ``timeout_s``. Writes are made with ``wait=True``: a write is only
acknowledged once Qdrant has applied it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models

from symbi_common.errors import ConfigError, DeadlineExceededError, SymbiError, UnavailableError
from symbi_context.minilm import Matrix

log = logging.getLogger(__name__)

T = TypeVar("T")
HNSW = models.HnswConfigDiff(m=16, ef_construct=200)
KEYWORD_FIELDS = ("agent_id", "tenant", "labels", "source", "document_id", "task_id")
FLOAT_FIELDS = ("created_at", "updated_at")
UPSERT_BATCH = 256
LOCAL_WARN_POINTS = 20_000


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    vector: Matrix
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore:
    def __init__(
        self, client: QdrantClient, prefix: str, dimension: int, *, local: bool, where: str, timeout_s: float
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.dimension = dimension
        self.local = local
        self.where = where
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1 if local else 8, thread_name_prefix="qdrant")

    @classmethod
    def open(cls, *, url: str, path: Path, api_key: str, prefix: str, dimension: int, timeout_s: float) -> VectorStore:
        if url:
            client = QdrantClient(url=url, api_key=api_key or None, timeout=int(max(1, timeout_s)))
            return cls(client, prefix, dimension, local=False, where=url, timeout_s=timeout_s)
        path.mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        except RuntimeError as exc:  # "Storage folder ... is already accessed by another instance"
            raise ConfigError(f"embedded Qdrant at {path} is in use by another process: {exc}") from None
        return cls(client, prefix, dimension, local=True, where=str(path), timeout_s=timeout_s)

    def collection(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"

    async def call(self, fn: Callable[[], T], what: str) -> T:
        """Run one client call on the store's threads, bounded by the timeout, errors typed."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(f"Qdrant ({self.where}): {what} took over {self.timeout_s}s") from None
        except SymbiError:
            raise
        except Exception as exc:  # connection refused, HTTP errors, a closed local store
            raise UnavailableError(f"Qdrant ({self.where}): {what} failed: {exc}") from exc

    async def ensure_collections(self, kinds: Sequence[str]) -> None:
        """Create missing collections (with indexes); refuse existing ones of another vector size."""
        for kind in kinds:
            await self.call(lambda kind=kind: self._ensure(kind), f"prepare collection {self.collection(kind)}")  # type: ignore[misc]

    def _ensure(self, kind: str) -> None:
        name = self.collection(kind)
        if self.client.collection_exists(name):
            params = self.client.get_collection(name).config.params.vectors
            size = params.size if isinstance(params, models.VectorParams) else None
            if size != self.dimension:
                raise ConfigError(
                    f"collection {name} holds {size}-dimension vectors but the embedding model makes "
                    f"{self.dimension}; use another [context].collection_prefix or re-ingest into a new one"
                )
            return
        self.client.create_collection(
            name,
            vectors_config=models.VectorParams(size=self.dimension, distance=models.Distance.COSINE),
            hnsw_config=HNSW,
        )
        if not self.local:  # local mode has no payload indexes (it filters every point in Python)
            for field in KEYWORD_FIELDS:
                self.client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD, wait=True)
            for field in FLOAT_FIELDS:
                self.client.create_payload_index(name, field, models.PayloadSchemaType.FLOAT, wait=True)
        log.info("created Qdrant collection %s (%d dimensions, cosine) at %s", name, self.dimension, self.where)

    async def upsert(self, kind: str, points: Sequence[Point]) -> None:
        name = self.collection(kind)
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [
                models.PointStruct(id=p.id, vector=p.vector.tolist(), payload=p.payload)
                for p in points[start : start + UPSERT_BATCH]
            ]
            await self.call(lambda batch=batch: self.client.upsert(name, batch, wait=True), f"upsert into {name}")  # type: ignore[misc]

    async def search(
        self, kind: str, vector: Matrix, flt: models.Filter | None, limit: int, min_score: float = 0.0
    ) -> list[Hit]:
        name = self.collection(kind)
        reply = await self.call(
            lambda: self.client.query_points(
                name,
                query=vector.tolist(),
                query_filter=flt,
                limit=limit,
                with_payload=True,
                score_threshold=min_score or None,
                search_params=None if self.local else models.SearchParams(hnsw_ef=128),
            ),
            f"search {name}",
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in reply.points]

    async def retrieve(self, kind: str, ids: Sequence[str]) -> list[Hit]:
        name = self.collection(kind)
        records = await self.call(lambda: self.client.retrieve(name, list(ids), with_payload=True), f"read {name}")
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    async def scroll(self, kind: str, flt: models.Filter | None, limit: int) -> list[Hit]:
        """Up to ``limit`` points matching ``flt`` (payloads only)."""
        name = self.collection(kind)
        out: list[Hit] = []
        offset: Any = None
        while len(out) < limit:
            records, offset = await self.call(
                lambda offset=offset: self.client.scroll(  # type: ignore[misc]
                    name, scroll_filter=flt, limit=min(256, limit - len(out)), offset=offset, with_payload=True
                ),
                f"scroll {name}",
            )
            out.extend(Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records)
            if offset is None:
                break
        return out

    async def count(self, kind: str, flt: models.Filter | None = None) -> int:
        name = self.collection(kind)
        reply = await self.call(lambda: self.client.count(name, count_filter=flt, exact=True), f"count {name}")
        return int(reply.count)

    async def size(self, kind: str) -> int:
        """Points in the collection (cheap: no filter, no exact count on a server)."""
        name = self.collection(kind)
        info = await self.call(lambda: self.client.get_collection(name), f"describe {name}")
        return int(info.points_count or 0)

    async def delete_ids(self, kind: str, ids: Sequence[str]) -> None:
        name = self.collection(kind)
        selector = models.PointIdsList(points=list(ids))
        await self.call(lambda: self.client.delete(name, selector, wait=True), f"delete points of {name}")

    async def delete_matching(self, kind: str, flt: models.Filter) -> int:
        """Delete every point matching ``flt``; returns how many there were."""
        found = await self.count(kind, flt)
        if found:
            name = self.collection(kind)
            selector = models.FilterSelector(filter=flt)
            await self.call(lambda: self.client.delete(name, selector, wait=True), f"delete points of {name}")
        return found

    async def close(self) -> None:
        try:
            await self.call(self.client.close, "close")
        finally:
            self._pool.shutdown(wait=False)
