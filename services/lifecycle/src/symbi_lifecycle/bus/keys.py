"""The router's own identity and the topic keys, kept in Redis so every replica shares them.

- ``symbi:bus:router`` (hash): the router's key id and raw private keys (Ed25519 seed,
  X25519 scalar). The first replica to start makes them; the others load them. The
  router signs and seals topic key grants with them; agents learn its public identity
  from their credentials and from directory lookups of ``symbi-router``.
- ``symbi:bus:topic:<topic>`` (hash): ``current`` epoch and one 32-byte AES-256-GCM
  key per epoch. A topic's key is made on first use; ``rotate`` starts a new epoch
  (old epochs still open messages already sent). Keys never leave the router except
  sealed to an agent that policy lets subscribe.
- ``symbi:bus:grants:<agent>`` (set): topics whose key an agent was granted. When the
  agent is terminated each of those topics moves to a new epoch, so what is published
  afterwards is closed to it even while its broker credentials have not yet expired.
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common import envelope
from symbi_common.bus.client import ROUTER_ID
from symbi_common.envelope import AgentKeys, SymmetricKey
from symbi_common.errors import UnavailableError
from symbi_common.ids import new_id
from symbi_common.redisio import as_bytes, as_text

ROUTER_KEY = "symbi:bus:router"
TOPIC_PREFIX = "symbi:bus:topic:"
GRANTS_PREFIX = "symbi:bus:grants:"

# ARGV: key id, signing seed, agreement scalar. Sets them only if absent; returns what is stored.
_ROUTER_SCRIPT = """
redis.call('HSETNX', KEYS[1], 'key_id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'signing', ARGV[2])
redis.call('HSETNX', KEYS[1], 'agreement', ARGV[3])
return redis.call('HMGET', KEYS[1], 'key_id', 'signing', 'agreement')
"""
# ARGV: a fresh key, used only if the topic has none yet. Returns {epoch, key}.
_TOPIC_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'current')
if not current then
  redis.call('HSET', KEYS[1], 'current', '0', '0', ARGV[1])
  current = '0'
end
return {current, redis.call('HGET', KEYS[1], current)}
"""
_ROTATE_SCRIPT = """
local epoch = redis.call('HINCRBY', KEYS[1], 'current', 1)
redis.call('HSET', KEYS[1], tostring(epoch), ARGV[1])
return epoch
"""


async def router_keys(client: aioredis.Redis) -> AgentKeys:
    """The router's identity, made by whichever replica comes first."""
    fresh = AgentKeys.generate(ROUTER_ID)
    signing, agreement = fresh.private_bytes()
    try:
        key_id, stored_signing, stored_agreement = await client.eval(
            _ROUTER_SCRIPT, 1, ROUTER_KEY, new_id(), signing, agreement
        )
    except (RedisError, OSError) as exc:
        raise UnavailableError(f"cannot load the router's identity from Redis: {exc}") from exc
    return AgentKeys.from_private_bytes(
        ROUTER_ID, as_text(key_id), as_bytes(stored_signing), as_bytes(stored_agreement)
    )


class TopicKeys:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def current(self, topic: str) -> tuple[int, SymmetricKey]:
        try:
            epoch, key = await self.client.eval(_TOPIC_SCRIPT, 1, TOPIC_PREFIX + topic, os.urandom(32))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read the key of topic {topic}: {exc}") from exc
        epoch = int(as_text(epoch))
        return epoch, SymmetricKey(envelope.topic_key_id(topic, epoch), as_bytes(key))

    async def rotate(self, topic: str) -> int:
        """Start a new epoch for ``topic``; subscribers fetch the new key when they first see it."""
        try:
            return int(await self.client.eval(_ROTATE_SCRIPT, 1, TOPIC_PREFIX + topic, os.urandom(32)))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot rotate the key of topic {topic}: {exc}") from exc

    async def record_grant(self, agent_id: str, topic: str) -> None:
        try:
            await self.client.sadd(GRANTS_PREFIX + agent_id, topic)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot record the grant of topic {topic}: {exc}") from exc

    async def revoke_grants(self, agent_id: str) -> list[str]:
        """Rotate every topic ``agent_id`` held a key of; returns those topics."""
        try:
            topics = sorted(as_text(t) for t in await self.client.smembers(GRANTS_PREFIX + agent_id))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read the topic grants of {agent_id}: {exc}") from exc
        for topic in topics:
            await self.rotate(topic)
        try:
            await self.client.delete(GRANTS_PREFIX + agent_id)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot clear the topic grants of {agent_id}: {exc}") from exc
        return topics
