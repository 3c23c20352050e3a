"""Context service: agent memory, shared knowledge and RAG on ``symbi.context.*``.

Start-up (the replica is ready only when all of it is done): Redis → the embedding
model (all-MiniLM-L6-v2 loaded from the installed wheel, offline; or the configured
OpenAI-compatible provider) → Qdrant (local mode under the state directory, or
``QDRANT_URL``) with its collections checked against the model's dimension →
policy and lifecycle clients → the working-memory janitor → the requests.

Background: the working-memory sweep (``working.py``) and the retention sweep, which
deletes shared knowledge older than ``[context].knowledge_retention_days``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from symbi_common import redisio
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.health import NOT_SERVING, SERVING, Check, CheckResult
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_common.settings import ContextSettings
from symbi_context import filters, working
from symbi_context.access import AgentDirectory, Guard
from symbi_context.api import ContextApi, ContextMetrics
from symbi_context.embedder import Embedder, EmbeddingMetrics, LocalEmbedder, RemoteEmbedder, check_local_dimension
from symbi_context.minilm import MiniLM
from symbi_context.openai_api import OpenAICompatible
from symbi_context.rag import Generator
from symbi_context.shortterm import ShortTermStore
from symbi_context.stores import Limits, Stores
from symbi_context.vectors import VectorStore
from symbi_context.working import QUEUE, WorkingMemoryJanitor
from symbi_proto.v1 import context_pb2

log = logging.getLogger(__name__)

VECTOR_KINDS = ("long_term", "working", "shared_knowledge")
RETENTION_INTERVAL_S = 3600.0


async def _embedder(ctx: ServiceContext, api: OpenAICompatible | None) -> Embedder:
    cfg = ctx.settings.context
    metrics = EmbeddingMetrics(ctx.metrics)
    if cfg.embedding_provider == "openai":
        if api is None:
            raise ConfigError("[context].embedding_provider = openai needs [context].openai_api_key (OPENAI_API_KEY)")
        return RemoteEmbedder(api, cfg.embedding_model, cfg.embedding_dimension, cache_size=cfg.context_cache_size,
                              timeout_s=cfg.provider_timeout_s, metrics=metrics)  # fmt: skip
    started = time.monotonic()
    model = await asyncio.to_thread(MiniLM)
    check_local_dimension(model, cfg.embedding_dimension)
    embedder = LocalEmbedder(model, cache_size=cfg.context_cache_size, timeout_s=cfg.provider_timeout_s,
                             metrics=metrics)  # fmt: skip
    ctx.stack.callback(embedder.close)
    await embedder.embed(["warm up"])  # the first call pays for thread and BLAS start-up, not a request
    log.info("embedding model %s loaded in %.2fs", embedder.model, time.monotonic() - started)
    return embedder


def _provider(cfg: ContextSettings) -> OpenAICompatible | None:
    if cfg.openai_api_key is None:
        return None
    return OpenAICompatible(
        cfg.openai_base_url, cfg.openai_api_key.get_secret_value(), timeout_s=cfg.provider_timeout_s
    )


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.context
    redis = await redisio.attach(ctx)
    api = _provider(cfg)
    if api is not None:
        ctx.stack.push_async_callback(api.close)
    embedder = await _embedder(ctx, api)
    vectors = VectorStore.open(
        url=cfg.vector_db_url,
        path=cfg.vector_db_path or ctx.settings.runtime.state_dir / "qdrant",
        api_key=cfg.vector_db_api_key.get_secret_value() if cfg.vector_db_api_key else "",
        prefix=cfg.collection_prefix,
        dimension=embedder.dimension,
        timeout_s=cfg.provider_timeout_s,
    )
    ctx.stack.push_async_callback(vectors.close)
    await vectors.ensure_collections(VECTOR_KINDS)
    policy = PolicyClient(
        ctx.settings.policy.addr,
        timeout_s=ctx.settings.policy.decision_timeout_s,
        cache_size=ctx.settings.policy.cache_size,
        enforce=ctx.settings.security.enforce_policies,
        actor=ctx.instance_id,
    )
    ctx.stack.push_async_callback(policy.close)
    await policy.watch(ctx.nc)
    timeout = ctx.settings.nats.request_timeout_s
    stores = Stores(
        embedder=embedder,
        vectors=vectors,
        short=ShortTermStore(redis, max_items=cfg.short_term_max_items),
        redis=redis,
        directory=AgentDirectory(LifecycleClient(ctx.nc, timeout_s=timeout, actor=ctx.instance_id)),
        guard=Guard(policy, enforce=ctx.settings.security.enforce_policies),
        audit=AuditPublisher(ctx.js, ctx.instance_id, enabled=ctx.settings.security.audit_enabled),
        source=ctx.instance_id,
        limits=Limits(short_term_ttl_s=cfg.short_term_ttl_s, retention_days=cfg.knowledge_retention_days),
    )
    janitor = WorkingMemoryJanitor(stores, SchedulerClient(ctx.nc, timeout_s=timeout), ctx.metrics)
    for subject, callback in working.subscriptions(janitor):
        ctx.subscriptions.append(await ctx.nc.subscribe(subject, queue=QUEUE, cb=callback))
    ctx.tasks.spawn(janitor.run_sweeps(), name="context-working-sweep")
    ctx.tasks.spawn(_retention(stores), name="context-retention")
    ctx.health.add_check("embeddings", _embedding_check(embedder))
    ctx.health.add_check("vector_db", _vector_check(vectors))
    llm = Generator(api, cfg.llm_model) if api is not None and cfg.llm_model else None
    await ContextApi(stores, llm, ContextMetrics(ctx.metrics)).register(ctx)
    log.info("context memory ready: Qdrant %s (%s), embeddings %s, answers %s",
             vectors.where, "local mode" if vectors.local else "server", embedder.model,
             f"by {cfg.llm_model}" if llm else "extractive")  # fmt: skip


async def expire_knowledge(vectors: VectorStore, retention_days: int, now: float | None = None) -> int:
    """Delete shared knowledge created more than ``retention_days`` ago; returns how many."""
    flt = context_pb2.ContextFilter()
    flt.created_before.FromNanoseconds(int(((now or time.time()) - retention_days * 86_400) * 1e9))
    qdrant_filter = filters.to_qdrant(flt)
    assert qdrant_filter is not None
    deleted = await vectors.delete_matching("shared_knowledge", qdrant_filter)
    if deleted:
        log.info("retention: deleted %d shared-knowledge items older than %d days", deleted, retention_days)
    return deleted


async def _retention(stores: Stores) -> None:
    while True:
        try:
            await expire_knowledge(stores.vectors, stores.limits.retention_days)
        except Exception as exc:  # a store is down: next round
            log.warning("retention sweep failed: %r", exc)
        await asyncio.sleep(RETENTION_INTERVAL_S)


def _embedding_check(embedder: Embedder) -> Check:
    def check() -> CheckResult:
        return SERVING, f"{embedder.model}, {embedder.dimension} dimensions"

    return check


def _vector_check(vectors: VectorStore) -> Check:
    async def check() -> CheckResult:
        try:
            count = await vectors.size("shared_knowledge")
        except SymbiError as exc:
            return NOT_SERVING, exc.message
        mode = "local mode" if vectors.local else "server"
        return SERVING, f"Qdrant {mode} at {vectors.where}; {count} shared-knowledge items"

    return check


SPEC = ServiceSpec(name="context", summary="agent memory, knowledge and RAG", setup=setup)
