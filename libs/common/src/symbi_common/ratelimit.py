"""Rate limits: token buckets in Redis, configured by policy (``RateLimit`` conditions).

A policy decision may carry ``rate_limit`` conditions (key, limit per period, burst);
the enforcing service passes them all to ``RateLimiter.acquire``. Every bucket named
is checked and, only if all of them have the tokens, all are charged, in one Lua
script (atomic across replicas; the clock is Redis's own ``TIME``, so replicas with
skewed clocks agree). A refused request charges nothing and is told how long to wait.

Buckets refill continuously at ``limit / period`` up to ``burst`` (``limit`` when 0)
and expire from Redis once they would be full again, so idle keys cost nothing.

Fail closed: when Redis cannot answer, ``acquire`` refuses with ``unavailable=True``
(the caller denies and says so); a cost above a bucket's capacity can never be met
and is refused at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_proto.v1 import policy_pb2

# KEYS: bucket keys. ARGV[1]: cost; then per key: refill rate (tokens per ms), capacity.
# Returns {allowed (0/1), wait in ms, index of the refusing key (1-based, 0 if none)}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local level = {}
local wait, refuser = 0, 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or cap
  local ts = tonumber(state[2]) or now
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
  level[i] = tokens
  if tokens < cost then
    local w = math.ceil((cost - tokens) / rate)
    if w > wait then wait, refuser = w, i end
  end
end
if refuser > 0 then return {0, wait, refuser} end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local left = level[i] - cost
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.6f', left), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - left) / rate) + 1000)
end
return {1, 0, 0}
"""


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    retry_after_s: float = 0.0
    key: str = ""
    """The bucket that refused (empty when allowed)."""
    detail: str = ""
    unavailable: bool = False
    """Refused because the limiter could not decide (fail closed)."""


ALLOWED = RateLimitResult(True)


class RateLimiter(Protocol):
    async def acquire(self, limits: Sequence[policy_pb2.RateLimit], cost: int = 1) -> RateLimitResult:
        """Take ``cost`` tokens from every bucket in ``limits``, or from none of them."""
        ...


def limits_of(decision: policy_pb2.PolicyDecision) -> list[policy_pb2.RateLimit]:
    """The rate-limit obligations of a decision (none unless it is AllowWithConditions)."""
    if decision.WhichOneof("outcome") != "allow_with_conditions":
        return []
    return [c.rate_limit for c in decision.allow_with_conditions.conditions if c.WhichOneof("kind") == "rate_limit"]


def _shape(limit: policy_pb2.RateLimit) -> tuple[float, int]:
    """(tokens per millisecond, capacity) of a bucket; ValueError when it makes no sense."""
    period_ms = limit.period.ToNanoseconds() / 1e6
    if not limit.key or limit.limit == 0 or period_ms <= 0:
        raise ValueError(f"rate limit {limit.key!r} needs a key, a limit and a positive period")
    return limit.limit / period_ms, limit.burst or limit.limit


class RedisRateLimiter:
    """Token buckets shared by every replica of every service, in one Redis."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "symbi:ratelimit:", timeout_s: float = 2.0) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._script = client.register_script(_SCRIPT)

    async def acquire(self, limits: Sequence[policy_pb2.RateLimit], cost: int = 1) -> RateLimitResult:
        if not limits:
            return ALLOWED
        if cost < 1:
            raise ValueError("cost must be at least 1")
        keys: list[str] = []
        args: list[str] = [str(cost)]
        for limit in limits:
            try:
                rate, capacity = _shape(limit)
            except ValueError as exc:
                return RateLimitResult(False, key=limit.key, detail=str(exc), unavailable=True)
            if cost > capacity:
                return RateLimitResult(
                    False, key=limit.key, detail=f"cost {cost} exceeds the capacity {capacity} of {limit.key!r}"
                )
            keys.append(self.prefix + limit.key)
            args += [repr(rate), str(capacity)]
        try:
            allowed, wait_ms, index = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            return RateLimitResult(False, detail=f"rate limiter unavailable: {exc}", unavailable=True)
        if allowed:
            return ALLOWED
        refused = limits[int(index) - 1]
        period_s = refused.period.ToNanoseconds() / 1e9
        return RateLimitResult(
            False,
            retry_after_s=math.ceil(int(wait_ms)) / 1000,
            key=refused.key,
            detail=f"rate limit {refused.key!r} exceeded ({refused.limit} per {period_s:g}s)",
        )


def rate_limit(key: str, limit: int, period_s: float, burst: int = 0) -> policy_pb2.RateLimit:
    """A ``RateLimit`` from plain values (tests, configured defaults)."""
    out = policy_pb2.RateLimit(key=key, limit=limit, burst=burst)
    out.period.FromNanoseconds(round(period_s * 1e9))
    return out
