"""Short-term memory in Redis: recent items of one agent, each with a time to live.

Keys (prefix ``symbi:ctx:st``):

- ``...:item:<context_id>``: a hash with ``payload`` (JSON, see ``items.to_payload``)
  and ``vector`` (float32 bytes), expiring with the item (Redis' own TTL);
- ``...:agent:<agent_id>``: a sorted set of the agent's item ids by creation time.
  Ids whose item has expired are dropped from it when next read; it keeps at most
  ``max_items`` ids (the oldest items go first) and expires after its newest item.

A store is one MULTI/EXEC transaction: acknowledged means in Redis. Relevance is
cosine similarity computed here over the agent's items (at most ``max_items``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import NotFoundError, UnavailableError
from symbi_common.redisio import as_bytes
from symbi_context import filters
from symbi_context.minilm import Matrix
from symbi_proto.v1 import context_pb2

P = "symbi:ctx:st"


def _item_key(context_id: str) -> str:
    return f"{P}:item:{context_id}"


def _agent_key(agent_id: str) -> str:
    return f"{P}:agent:{agent_id}"


@dataclass(frozen=True, slots=True)
class Stored:
    context_id: str
    payload: dict[str, Any]
    vector: Matrix


class ShortTermStore:
    def __init__(self, redis: aioredis.Redis, *, max_items: int) -> None:
        self.redis = redis
        self.max_items = max_items

    async def put(self, context_id: str, payload: dict[str, Any], vector: Matrix, ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        agent = str(payload["agent_id"])
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    _item_key(context_id),
                    mapping={"payload": json.dumps(payload), "vector": vector.astype(np.float32).tobytes()},
                )
                pipe.pexpire(_item_key(context_id), ttl_ms)
                pipe.zadd(_agent_key(agent), {context_id: payload["created_at"] * 1000})
                pipe.pexpire(_agent_key(agent), ttl_ms, nx=True)
                pipe.pexpire(_agent_key(agent), ttl_ms, gt=True)
                await pipe.execute()
            await self._trim(agent)
        except RedisError as exc:
            raise UnavailableError(f"short-term memory (Redis) did not store {context_id}: {exc}") from exc

    async def _trim(self, agent: str) -> None:
        surplus = await self.redis.zcard(_agent_key(agent)) - self.max_items
        if surplus > 0:
            oldest = await self.redis.zrange(_agent_key(agent), 0, surplus - 1)
            ids = [as_bytes(i).decode() for i in oldest]  # type: ignore[arg-type]
            await self.redis.delete(*[_item_key(i) for i in ids])
            await self.redis.zrem(_agent_key(agent), *ids)

    async def get(self, context_id: str) -> Stored | None:
        try:
            raw = await self.redis.hgetall(_item_key(context_id))
        except RedisError as exc:
            raise UnavailableError(f"short-term memory (Redis): {exc}") from exc
        return _decode(context_id, raw)

    async def items(self, agent_id: str) -> list[Stored]:
        """Every live item of the agent, oldest first."""
        try:
            members = await self.redis.zrange(_agent_key(agent_id), 0, -1)
            ids = [as_bytes(i).decode() for i in members]  # type: ignore[arg-type]
            if not ids:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for context_id in ids:
                    pipe.hgetall(_item_key(context_id))
                raws = await pipe.execute()
            out, gone = [], []
            for context_id, raw in zip(ids, raws, strict=True):
                stored = _decode(context_id, raw)
                if stored is None:
                    gone.append(context_id)
                else:
                    out.append(stored)
            if gone:
                await self.redis.zrem(_agent_key(agent_id), *gone)
            return out
        except RedisError as exc:
            raise UnavailableError(f"short-term memory (Redis): {exc}") from exc

    async def search(
        self, agent_id: str, vector: Matrix, flt: context_pb2.ContextFilter | None, limit: int, min_score: float
    ) -> list[tuple[Stored, float]]:
        candidates = [s for s in await self.items(agent_id) if filters.matches(flt, s.payload)]
        if not candidates:
            return []
        scores = np.stack([s.vector for s in candidates]) @ vector
        ranked = sorted(zip(candidates, scores.tolist(), strict=True), key=lambda pair: -pair[1])
        return [(s, score) for s, score in ranked if score >= min_score][:limit]

    async def delete(self, agent_id: str, context_ids: list[str]) -> int:
        if not context_ids:
            return 0
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*[_item_key(i) for i in context_ids])
                pipe.zrem(_agent_key(agent_id), *context_ids)
                deleted, _ = await pipe.execute()
        except RedisError as exc:
            raise UnavailableError(f"short-term memory (Redis): {exc}") from exc
        return int(deleted)

    async def delete_matching(self, agent_id: str, flt: context_pb2.ContextFilter | None) -> int:
        ids = [s.context_id for s in await self.items(agent_id) if filters.matches(flt, s.payload)]
        return await self.delete(agent_id, ids)

    async def ttl_s(self, context_id: str) -> float:
        remaining = await self.redis.pttl(_item_key(context_id))
        if remaining < 0:
            raise NotFoundError(f"short-term item {context_id} does not exist")
        return float(remaining) / 1000


def _decode(context_id: str, raw: dict[Any, Any]) -> Stored | None:
    if not raw:
        return None
    fields = {as_bytes(k).decode(): as_bytes(v) for k, v in raw.items()}
    if "payload" not in fields or "vector" not in fields:
        return None
    return Stored(context_id, json.loads(fields["payload"]), np.frombuffer(fields["vector"], dtype=np.float32))
