"""Replay caches: check-and-set, expiry, sharing across replicas, and failing closed."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from symbi_common.errors import ResourceExhaustedError, UnavailableError
from symbi_common.ids import new_id
from symbi_common.replay import MemoryReplayCache, RedisReplayCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_cache_remembers_until_expiry() -> None:
    clock = Clock()
    cache = MemoryReplayCache(clock=clock)
    assert await cache.seen("a", 10) is False
    assert await cache.seen("a", 10) is True
    clock.now += 11
    assert await cache.seen("a", 10) is False


async def test_full_memory_cache_purges_expired_then_fails_closed() -> None:
    clock = Clock()
    cache = MemoryReplayCache(max_entries=3, clock=clock)
    for key in "abc":
        await cache.seen(key, 5)
    clock.now += 6
    assert await cache.seen("d", 5) is False  # the expired three made room
    assert len(cache) == 1
    await cache.seen("e", 5)
    await cache.seen("f", 5)
    with pytest.raises(ResourceExhaustedError, match="replay cache full"):
        await cache.seen("g", 5)


@pytest.mark.integration
async def test_redis_cache_is_shared_by_replicas_and_expires(redis_url: str) -> None:
    first, second = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        a, b = RedisReplayCache(first), RedisReplayCache(second)
        key = new_id()
        assert await a.seen(key, 0.2) is False
        assert await b.seen(key, 0.2) is True  # another replica sees it too
        while await first.exists(f"symbi:replay:{key}"):
            await asyncio.sleep(0.02)
        assert await b.seen(key, 5) is False
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.integration
async def test_unreachable_redis_fails_closed() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(UnavailableError, match="replay cache unavailable"):
            await RedisReplayCache(client).seen("x", 1)
    finally:
        await client.aclose()
