"""What the memory operations work with, gathered once in ``setup`` and passed down."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.audit_events import AuditSink, build_event
from symbi_common.errors import UnavailableError
from symbi_common.redisio import as_bytes
from symbi_context.access import AgentDirectory, Guard
from symbi_context.embedder import Embedder
from symbi_context.shortterm import ShortTermStore
from symbi_context.vectors import VectorStore
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

WORKING_TASKS = "symbi:ctx:working:tasks"
KNOWLEDGE_STORED = "context.knowledge_stored"
KNOWLEDGE_DELETED = "context.knowledge_deleted"


@dataclass(frozen=True, slots=True)
class Limits:
    short_term_ttl_s: float
    retention_days: int


@dataclass(slots=True)
class Stores:
    embedder: Embedder
    vectors: VectorStore
    short: ShortTermStore
    redis: aioredis.Redis
    directory: AgentDirectory
    guard: Guard
    audit: AuditSink
    source: str
    limits: Limits

    async def remember_task(self, task_id: str, agent_id: str) -> None:
        """Note that ``task_id`` has working memory (so its end, or a missed end, clears it)."""
        try:
            await self.redis.hset(WORKING_TASKS, task_id, agent_id)
        except RedisError as exc:
            raise UnavailableError(f"cannot note working memory of task {task_id} in Redis: {exc}") from exc

    async def forget_task(self, task_id: str) -> None:
        await self.redis.hdel(WORKING_TASKS, task_id)

    async def tasks_with_memory(self) -> dict[str, str]:
        raw = await self.redis.hgetall(WORKING_TASKS)
        return {as_bytes(k).decode(): as_bytes(v).decode() for k, v in raw.items()}

    async def audit_knowledge(
        self,
        event_type: str,
        agent_id: str,
        tenant: str,
        context_ids: list[str],
        labels: set[str],
        details: dict[str, object],
        outcome: audit_pb2.AuditOutcome.ValueType = audit_pb2.AUDIT_OUTCOME_SUCCESS,
    ) -> None:
        """Record a shared-knowledge write or delete durably (before it is made: no unaudited change)."""
        event = build_event(
            event_type,
            source=self.source,
            agent_id=agent_id,
            tenant=tenant,
            details={"context_ids": context_ids, "count": len(context_ids), **details},
            data_labels=sorted(labels),
            outcome=outcome,
        )
        await self.audit.emit(event)
