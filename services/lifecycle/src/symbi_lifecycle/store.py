"""Agent records in Redis: atomic, revisioned writes that two replicas cannot corrupt.

Keys (``{p}`` is ``symbi:lc``)::

    {p}:agent:<id>      hash  rev, state, record (AgentRecord bytes)
    {p}:hist:<id>       list  StateTransition bytes, oldest first
    {p}:keys:<id>       hash  the agent's private keys (never in a record or a message)
    {p}:agents          zset  every agent id (score 0: ordered by id, i.e. creation time)
    {p}:state:<n>       set   ids per state, for counts and filters
    {p}:name:<tenant>:<name>  the id holding that name (freed when the agent terminates)
    {p}:idem:<key>      the agent id a create with that idempotency key made (1 day)
    {p}:outbox          hash  event id -> Outbound bytes not yet published (see ``outbox``)

Every change is one Lua script: it checks the expected revision (optimistic
concurrency), writes the record, appends the transition, moves the id between state
sets and puts the transition's audit event in the outbox, all or nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from symbi_common.errors import AlreadyExistsError, ConflictError, NotFoundError, UnavailableError
from symbi_common.redisio import as_bytes, as_text
from symbi_proto.v1 import agent_pb2

P = "symbi:lc"
AGENTS = f"{P}:agents"
OUTBOX = f"{P}:outbox"
POLICY_CLEANUP = f"{P}:policy_cleanup"
IDEMPOTENCY_TTL_S = 24 * 3600


def agent_key(agent_id: str) -> str:
    return f"{P}:agent:{agent_id}"


def history_key(agent_id: str) -> str:
    return f"{P}:hist:{agent_id}"


def keys_key(agent_id: str) -> str:
    return f"{P}:keys:{agent_id}"


def state_key(state: int) -> str:
    return f"{P}:state:{state}"


def name_key(tenant: str, name: str) -> str:
    return f"{P}:name:{tenant}:{name}"


def idempotency_key(key: str) -> str:
    return f"{P}:idem:{key}"


# KEYS: agent, hist, agents, state set, name, outbox, keys, idem
# ARGV: id, record, state, transition, event id, outbound, signing key, agreement key, idem ttl
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', ARGV[1]} end
local holder = redis.call('GET', KEYS[5])
if holder then return {'name', holder} end
if KEYS[8] ~= '' then
  local made = redis.call('GET', KEYS[8])
  if made then return {'idem', made} end
  redis.call('SET', KEYS[8], ARGV[1], 'EX', tonumber(ARGV[9]))
end
redis.call('SET', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'rev', '1', 'state', ARGV[3], 'record', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[7], 'signing', ARGV[7], 'agreement', ARGV[8])
return {'ok', ARGV[1]}
"""

# KEYS: agent, hist, old state set, new state set, outbox, name (or the agent key when kept)
# ARGV: expected rev, new rev, record, new state, transition, event id, outbound, free name (1/0), id, old state
_UPDATE = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return {'missing', ''} end
if rev ~= ARGV[1] then return {'rev', rev} end
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[10] then return {'rev', rev} end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'state', ARGV[4], 'record', ARGV[3])
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[5]) end
if KEYS[3] ~= KEYS[4] then
  redis.call('SREM', KEYS[3], ARGV[9])
  redis.call('SADD', KEYS[4], ARGV[9])
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[5], ARGV[6], ARGV[7]) end
if ARGV[8] == '1' and redis.call('GET', KEYS[6]) == ARGV[9] then redis.call('DEL', KEYS[6]) end
return {'ok', ARGV[2]}
"""


@dataclass(frozen=True, slots=True)
class Stored:
    record: agent_pb2.AgentRecord
    revision: int


@dataclass(frozen=True, slots=True)
class Outbound:
    """A transition waiting in the outbox: its audit event id and the serialized pieces."""

    event_id: str
    data: bytes


class AgentStore:
    """Records, history, indexes and the outbox of the lifecycle service (any number of replicas)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)

    async def create(
        self,
        record: agent_pb2.AgentRecord,
        transition: agent_pb2.StateTransition,
        outbound: Outbound,
        private_keys: tuple[bytes, bytes],
        *,
        idempotency: str = "",
    ) -> None:
        """Store a new record; ``AlreadyExistsError`` names the agent holding the name or the key."""
        d = record.definition
        keys = [
            agent_key(record.agent_id),
            history_key(record.agent_id),
            AGENTS,
            state_key(record.state),
            name_key(d.tenant, d.metadata.name),
            OUTBOX,
            keys_key(record.agent_id),
            idempotency_key(idempotency) if idempotency else "",
        ]
        args = [
            record.agent_id,
            record.SerializeToString(),
            record.state,
            transition.SerializeToString(),
            outbound.event_id,
            outbound.data,
            *private_keys,
            IDEMPOTENCY_TTL_S,
        ]
        status, value = await self._run(self._create, keys, args)
        if status == "name":
            tenant = f" in tenant {d.tenant!r}" if d.tenant else ""
            raise AlreadyExistsError(
                f"an agent named {d.metadata.name!r} already exists{tenant} ({value}); "
                "terminate it or pick another name",
                metadata={"agent_id": value},
            )
        if status == "idem":
            raise AlreadyExistsError(f"idempotency key already used by agent {value}", metadata={"agent_id": value})
        if status == "exists":  # pragma: no cover - ids are fresh UUIDv7s
            raise AlreadyExistsError(f"agent {value} already exists")

    async def update(
        self,
        before: Stored,
        record: agent_pb2.AgentRecord,
        transition: agent_pb2.StateTransition | None,
        outbound: Outbound | None,
        *,
        free_name: bool = False,
    ) -> Stored:
        """Write ``record`` if the stored revision is still ``before``'s; else ``ConflictError``."""
        agent_id = record.agent_id
        d = record.definition
        revision = before.revision + 1
        record.revision = revision
        keys = [
            agent_key(agent_id),
            history_key(agent_id),
            state_key(before.record.state),
            state_key(record.state),
            OUTBOX,
            name_key(d.tenant, d.metadata.name) if free_name else agent_key(agent_id),
        ]
        args = [
            before.revision,
            revision,
            record.SerializeToString(),
            record.state,
            transition.SerializeToString() if transition is not None else "",
            outbound.event_id if outbound is not None else "",
            outbound.data if outbound is not None else b"",
            "1" if free_name else "0",
            agent_id,
            before.record.state,
        ]
        status, value = await self._run(self._update, keys, args)
        if status == "missing":
            raise NotFoundError(f"agent {agent_id} does not exist")
        if status == "rev":
            raise ConflictError(
                f"agent {agent_id} changed meanwhile (revision {value}, expected {before.revision}); read it again",
                metadata={"revision": value},
            )
        return Stored(record, revision)

    async def get(self, agent_id: str) -> Stored:
        try:
            rev, data = await self.r.hmget(agent_key(agent_id), ["rev", "record"])
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read agent {agent_id} from Redis: {exc}") from exc
        if rev is None or data is None:
            raise NotFoundError(f"agent {agent_id} does not exist")
        record = agent_pb2.AgentRecord()
        record.ParseFromString(as_bytes(data))
        return Stored(record, int(rev))

    async def get_many(self, agent_ids: Sequence[str]) -> list[agent_pb2.AgentRecord]:
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for agent_id in agent_ids:
                    pipe.hget(agent_key(agent_id), "record")
                blobs = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read agents from Redis: {exc}") from exc
        records = []
        for blob in blobs:
            if blob is not None:
                record = agent_pb2.AgentRecord()
                record.ParseFromString(blob)
                records.append(record)
        return records

    async def page(self, after: str, size: int) -> list[str]:
        """Up to ``size`` agent ids after ``after`` (exclusive), in id (= creation) order."""
        low = f"({after}" if after else "-"
        try:
            raw = await self.r.zrangebylex(AGENTS, low, "+", start=0, num=size)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot list agents from Redis: {exc}") from exc
        return [as_text(v) for v in raw]

    async def ids_in_state(self, state: int) -> list[str]:
        members = await self.r.smembers(state_key(state))
        return sorted(as_text(v) for v in members)

    async def count(self) -> int:
        return int(await self.r.zcard(AGENTS))

    async def counts(self, states: Sequence[int]) -> dict[int, int]:
        async with self.r.pipeline(transaction=False) as pipe:
            for state in states:
                pipe.scard(state_key(state))
            values = await pipe.execute()
        return {state: int(n) for state, n in zip(states, values, strict=True)}

    async def history(self, agent_id: str, start: int, size: int) -> tuple[list[agent_pb2.StateTransition], int]:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.lrange(history_key(agent_id), start, start + size - 1)
            pipe.llen(history_key(agent_id))
            blobs, total = await pipe.execute()
        out = []
        for blob in blobs:
            transition = agent_pb2.StateTransition()
            transition.ParseFromString(blob)
            out.append(transition)
        return out, int(total)

    async def idempotent(self, key: str) -> str | None:
        value = await self.r.get(idempotency_key(key))
        return as_text(value) if value is not None else None

    async def private_keys(self, agent_id: str) -> tuple[bytes, bytes] | None:
        signing, agreement = await self.r.hmget(keys_key(agent_id), ["signing", "agreement"])
        return (as_bytes(signing), as_bytes(agreement)) if signing is not None and agreement is not None else None

    # The outbox -------------------------------------------------------------------

    async def outbox(self) -> AsyncIterator[Outbound]:
        async for event_id, data in self.r.hscan_iter(OUTBOX):
            yield Outbound(as_text(event_id), as_bytes(data))

    async def outbox_size(self) -> int:
        return int(await self.r.hlen(OUTBOX))

    async def published(self, event_id: str) -> None:
        await self.r.hdel(OUTBOX, event_id)

    async def add_policy_cleanup(self, policy_id: str) -> None:
        await self.r.sadd(POLICY_CLEANUP, policy_id)  # type: ignore[misc,unused-ignore]

    async def policy_cleanups(self) -> list[str]:
        members = await self.r.smembers(POLICY_CLEANUP)  # type: ignore[misc,unused-ignore]
        return sorted(as_text(v) for v in members)

    async def policy_cleaned(self, policy_id: str) -> None:
        await self.r.srem(POLICY_CLEANUP, policy_id)  # type: ignore[misc,unused-ignore]

    async def _run(self, script: object, keys: list[str], args: list[object]) -> tuple[str, str]:
        try:
            status, value = await script(keys=keys, args=args)  # type: ignore[operator]
        except ResponseError as exc:  # pragma: no cover - a bug in a script
            raise UnavailableError(f"Redis refused an agent update: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot write the agent record to Redis: {exc}") from exc
        return status.decode(), value.decode() if isinstance(value, bytes) else str(value)
