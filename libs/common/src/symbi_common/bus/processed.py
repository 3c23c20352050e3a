"""Which direct messages a receiver has already handled, so a redelivery is handled once.

A direct message is acknowledged only after its handler succeeded, so the broker
redelivers anything whose acknowledgement did not arrive (a crash, a lost connection).
The receiver marks a message id done *before* acknowledging and skips ids already
done, so a message is handled once even when the acknowledgement is what was lost.

``MemoryProcessedLog`` lasts as long as the process; ``RedisProcessedLog`` survives a
restart of the receiver (what an agent runtime that may be restarted should use).
Entries expire after the inbox's maximum age: no redelivery can come later than that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import UnavailableError


class ProcessedLog(Protocol):
    async def done(self, message_id: str) -> bool:
        """True if ``message_id`` was handled before."""
        ...

    async def mark(self, message_id: str) -> None:
        """Record ``message_id`` as handled."""
        ...


class MemoryProcessedLog:
    """Handled ids of one process, oldest forgotten first beyond ``max_entries`` or ``ttl_s``."""

    def __init__(
        self, *, ttl_s: float = 7 * 24 * 3600.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._ids: OrderedDict[str, float] = OrderedDict()

    async def done(self, message_id: str) -> bool:
        expires = self._ids.get(message_id)
        return expires is not None and expires > self.clock()

    async def mark(self, message_id: str) -> None:
        self._ids[message_id] = self.clock() + self.ttl_s
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)


class RedisProcessedLog:
    """Handled ids of one agent in Redis: ``SET symbi:bus:done:<agent>:<id> 1 PX ttl``."""

    def __init__(self, client: aioredis.Redis, agent_id: str, *, ttl_s: float = 7 * 24 * 3600.0) -> None:
        self.client = client
        self.prefix = f"symbi:bus:done:{agent_id}:"
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def done(self, message_id: str) -> bool:
        try:
            return bool(await self.client.exists(self.prefix + message_id))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"processed-message log unavailable: {exc}") from exc

    async def mark(self, message_id: str) -> None:
        try:
            await self.client.set(self.prefix + message_id, b"1", px=self.ttl_ms)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"processed-message log unavailable: {exc}") from exc
