"""Token buckets on a real Redis: capacity, refill, all-or-nothing charging, sharing, failing closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from symbi_common.ids import new_id
from symbi_common.ratelimit import RedisRateLimiter, limits_of, rate_limit
from symbi_proto.v1 import policy_pb2


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield redis
    await redis.aclose()


async def test_burst_then_refused_with_a_wait(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client)
    bucket = rate_limit(f"agent:{new_id()}", limit=5, period_s=60, burst=3)
    results = [await limiter.acquire([bucket]) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    refused = results[-1]
    assert refused.key == bucket.key
    assert not refused.unavailable
    # One token comes back every 12 s.
    assert 11.0 < refused.retry_after_s <= 12.0
    assert "5 per 60s" in refused.detail


async def test_tokens_refill_over_time(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client)
    bucket = rate_limit(f"agent:{new_id()}", limit=20, period_s=1)  # one token per 50 ms
    while (await limiter.acquire([bucket])).allowed:
        pass
    refused = await limiter.acquire([bucket])
    assert not refused.allowed
    assert refused.retry_after_s <= 0.05
    await asyncio.sleep(refused.retry_after_s + 0.06)
    assert (await limiter.acquire([bucket])).allowed


async def test_all_buckets_charged_or_none(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client)
    wide = rate_limit(f"agent:{new_id()}", limit=100, period_s=60)
    narrow = rate_limit(f"tool:{new_id()}", limit=1, period_s=60)
    assert (await limiter.acquire([wide, narrow])).allowed
    refused = await limiter.acquire([wide, narrow])
    assert not refused.allowed
    assert refused.key == narrow.key
    # The refused call took nothing from the wide bucket: 99 remain, not 98.
    raw = await client.hget(f"symbi:ratelimit:{wide.key}", "tokens")
    assert raw is not None
    tokens = float(raw)
    assert 98.9 < tokens < 99.5


async def test_replicas_share_one_bucket(client: aioredis.Redis, redis_url: str) -> None:
    other = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        a, b = RedisRateLimiter(client), RedisRateLimiter(other)
        bucket = rate_limit(f"agent:{new_id()}", limit=10, period_s=3600)
        results = await asyncio.gather(*(limiter.acquire([bucket]) for limiter in [a, b] * 10))
        assert sum(r.allowed for r in results) == 10
    finally:
        await other.aclose()


async def test_cost_above_capacity_is_refused_at_once(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client)
    bucket = rate_limit(f"bytes:{new_id()}", limit=100, period_s=1)
    result = await limiter.acquire([bucket], cost=101)
    assert not result.allowed
    assert "exceeds the capacity 100" in result.detail
    assert (await limiter.acquire([bucket], cost=100)).allowed


async def test_nonsense_limit_fails_closed(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client)
    result = await limiter.acquire([policy_pb2.RateLimit(key="agent:x", limit=0)])
    assert not result.allowed
    assert result.unavailable


async def test_unreachable_redis_fails_closed() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        result = await RedisRateLimiter(dead).acquire([rate_limit("agent:x", 1, 1)])
    finally:
        await dead.aclose()
    assert not result.allowed
    assert result.unavailable
    assert "unavailable" in result.detail


async def test_no_limits_allow_without_redis() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1)
    assert (await RedisRateLimiter(dead).acquire([])).allowed
    await dead.aclose()


def test_limits_of_reads_only_conditions() -> None:
    decision = policy_pb2.PolicyDecision()
    decision.allow_with_conditions.conditions.add(rate_limit=rate_limit("a", 1, 1))
    decision.allow_with_conditions.conditions.add().max_bytes.SetInParent()
    assert [limit.key for limit in limits_of(decision)] == ["a"]
    assert limits_of(policy_pb2.PolicyDecision(allow=policy_pb2.Allow())) == []
