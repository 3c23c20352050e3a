"""Replay caches: remember ids and nonces for a window, answer "seen before?" atomically.

``seen(key, ttl_s)`` records ``key`` and returns whether it was already there, as one
check-and-set. Entries only need to outlive the window in which a message is accepted
at all (receivers reject timestamps outside their clock-skew window), so expiry keeps
the cache bounded. Both caches fail closed: if the memory cache is full of live entries
or Redis cannot answer, ``seen`` raises and the receiver refuses the message.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import ResourceExhaustedError, UnavailableError


class ReplayCache(Protocol):
    async def seen(self, key: str, ttl_s: float) -> bool:
        """Record ``key`` for ``ttl_s`` seconds; True if it was recorded before and is still live."""
        ...


class MemoryReplayCache:
    """One process's replay cache: insertion-ordered, expired entries purged as it fills."""

    def __init__(self, max_entries: int = 1_000_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def seen(self, key: str, ttl_s: float) -> bool:
        now = self.clock()
        expires = self._entries.get(key)
        if expires is not None and expires > now:
            return True
        if len(self._entries) >= self.max_entries:
            self._purge(now)
            if len(self._entries) >= self.max_entries:
                raise ResourceExhaustedError(f"replay cache full ({self.max_entries} live entries); refusing")
        self._entries[key] = now + ttl_s
        self._entries.move_to_end(key)
        return False

    def _purge(self, now: float) -> None:
        # Entries are mostly in expiry order (same TTL per receiver); stop at the first live one.
        while self._entries:
            key, expires = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[key]


class RedisReplayCache:
    """A replay cache shared by every replica of a receiver: ``SET key 1 NX PX ttl``."""

    def __init__(self, client: aioredis.Redis, prefix: str = "symbi:replay:") -> None:
        self.client = client
        self.prefix = prefix

    async def seen(self, key: str, ttl_s: float) -> bool:
        try:
            created = await self.client.set(self.prefix + key, b"1", nx=True, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"replay cache unavailable: {exc}") from exc
        return not created
