"""Redis/Valkey connection for services that keep state there, with a health check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import UnavailableError
from symbi_common.health import NOT_SERVING, SERVING, CheckResult
from symbi_common.retry import RetryPolicy, retry

if TYPE_CHECKING:
    from symbi_common.service import ServiceContext

SOCKET_TIMEOUT_S = 5.0


async def connect(url: str, *, deadline_s: float = 10.0) -> aioredis.Redis:
    """Open a client and prove the server answers, retrying until ``deadline_s``."""
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)

    async def ping() -> aioredis.Redis:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot reach Redis at {url}: {exc}") from exc
        return client

    try:
        return await retry(ping, RetryPolicy(deadline_s=deadline_s), what=f"connect to Redis at {url}")
    except BaseException:
        await client.aclose()
        raise


def health_check(client: aioredis.Redis) -> Callable[[], Awaitable[CheckResult]]:
    async def check() -> CheckResult:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            return NOT_SERVING, f"ping failed: {exc}"
        return SERVING, "ping ok"

    return check


async def attach(ctx: ServiceContext) -> aioredis.Redis:
    """Connect a service to Redis for its lifetime: closed at shutdown, checked in health."""
    client = await connect(ctx.settings.redis.url, deadline_s=ctx.settings.nats.connect_timeout_s)
    ctx.stack.push_async_callback(client.aclose)
    ctx.health.add_check("redis", health_check(client))
    return client


def as_bytes(value: bytes | str) -> bytes:
    """A reply value as bytes (clients may be configured to decode responses)."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
