"""Tasks in Redis, so a restarted scheduler loses no queued or placed task.

Keys (``{p}`` is ``symbi:sched``)::

    {p}:task:<id>      TaskStatus bytes (final ones expire after ``FINAL_TTL_S``)
    {p}:active         set of the ids of every task not yet final
    {p}:idem:<key>     the task id a schedule request with that idempotency key made
    {p}:leader         the replica holding the scheduling lease (see ``Lease``)

A request is answered only after its task is written, so an acknowledged task
survives any crash after it.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import UnavailableError
from symbi_common.redisio import as_bytes, as_text
from symbi_proto.v1 import task_pb2

P = "symbi:sched"
ACTIVE = f"{P}:active"
LEADER = f"{P}:leader"
FINAL_TTL_S = 7 * 24 * 3600
IDEMPOTENCY_TTL_S = 24 * 3600
FINAL = frozenset({task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED,
                   task_pb2.TASK_STATE_REJECTED})  # fmt: skip

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def task_key(task_id: str) -> str:
    return f"{P}:task:{task_id}"


class TaskStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._renew = client.register_script(_RENEW)
        self._resign = client.register_script(_RESIGN)

    async def save(self, statuses: Iterable[task_pb2.TaskStatus]) -> None:
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                for status in statuses:
                    task_id = status.task.task_id
                    if status.state in FINAL:
                        pipe.set(task_key(task_id), status.SerializeToString(), ex=FINAL_TTL_S)
                        pipe.srem(ACTIVE, task_id)
                    else:
                        pipe.set(task_key(task_id), status.SerializeToString())
                        pipe.sadd(ACTIVE, task_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot persist tasks to Redis: {exc}") from exc

    async def load_active(self) -> list[task_pb2.TaskStatus]:
        ids = sorted(as_text(v) for v in await self.r.smembers(ACTIVE))
        out = []
        for start in range(0, len(ids), 1000):
            blobs = await self.r.mget([task_key(i) for i in ids[start : start + 1000]])
            for blob in blobs:
                if blob is not None:
                    out.append(task_pb2.TaskStatus.FromString(as_bytes(blob)))
        return out

    async def get(self, task_id: str) -> task_pb2.TaskStatus | None:
        blob = await self.r.get(task_key(task_id))
        return task_pb2.TaskStatus.FromString(as_bytes(blob)) if blob is not None else None

    async def claim_idempotency(self, key: str, task_id: str) -> str | None:
        """None if the key is new (now bound to ``task_id``); else the task it made before."""
        made = await self.r.set(f"{P}:idem:{key}", task_id, nx=True, ex=IDEMPOTENCY_TTL_S)
        if made:
            return None
        existing = await self.r.get(f"{P}:idem:{key}")
        return as_text(existing) if existing is not None else None

    # The lease ----------------------------------------------------------------------

    async def acquire(self, holder: str, ttl_s: float) -> bool:
        return bool(await self.r.set(LEADER, holder, nx=True, px=int(ttl_s * 1000)))

    async def renew(self, holder: str, ttl_s: float) -> bool:
        return bool(await self._renew(keys=[LEADER], args=[holder, int(ttl_s * 1000)]))

    async def resign(self, holder: str) -> None:
        await self._resign(keys=[LEADER], args=[holder])

    async def leader(self) -> str | None:
        value = await self.r.get(LEADER)
        return as_text(value) if value is not None else None
