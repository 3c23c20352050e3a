"""Persisted TOFU pins: which key (and which descriptor) was trusted for each tool.

Pins live in one Redis hash (``symbi:mcp:pins``, field ``<server>/<tool>``, a JSON
value), shared by every gateway replica. The first pin of a tool is written with
``HSETNX``: when two replicas verify the same new tool at once, one pin wins and the
other replica compares against it, so TOFU can never pin two different keys. A pin is
only ever written after the signature it vouches for verified (``verification.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import UnavailableError
from symbi_common.redisio import as_text
from symbi_proto.v1 import tools_pb2

PINS_KEY = "symbi:mcp:pins"
TOFU = "tofu"


@dataclass(frozen=True, slots=True)
class Pin:
    server: str
    tool: str
    domain: str
    fingerprint: str
    public_key_pem: str
    pinned_at: float
    pinned_by: str
    descriptor_sha256: str
    coverage: str

    @property
    def field(self) -> str:
        return f"{self.server}/{self.tool}"

    def with_descriptor(self, sha256: str) -> Pin:
        return replace(self, descriptor_sha256=sha256)

    def to_proto(self) -> tools_pb2.ToolPin:
        out = tools_pb2.ToolPin(
            server=self.server,
            tool=self.tool,
            domain=self.domain,
            key_fingerprint=self.fingerprint,
            pinned_by=self.pinned_by,
            descriptor_sha256=self.descriptor_sha256,
            coverage=self.coverage,
        )
        out.pinned_at.FromNanoseconds(int(self.pinned_at * 1e9))
        return out


def new_pin(
    server: str, tool: str, domain: str, fingerprint: str, pem: str, by: str, descriptor: str, coverage: str
) -> Pin:
    return Pin(server, tool, domain, fingerprint, pem, time.time(), by, descriptor, coverage)


class PinStore(Protocol):
    async def get(self, server: str, tool: str) -> Pin | None: ...

    async def pin_first(self, pin: Pin) -> Pin:
        """Store ``pin`` unless the tool already has one; return the pin in force."""
        ...

    async def put(self, pin: Pin) -> None:
        """Store ``pin``, replacing any (operator re-pin, or a signed descriptor update)."""
        ...

    async def remove(self, server: str, tool: str) -> bool: ...

    async def all(self, server: str = "") -> list[Pin]: ...


class RedisPinStore:
    def __init__(self, client: aioredis.Redis, *, key: str = PINS_KEY) -> None:
        self.client = client
        self.key = key

    async def get(self, server: str, tool: str) -> Pin | None:
        try:
            raw = await self.client.hget(self.key, f"{server}/{tool}")
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"pin store unavailable: {exc}") from None
        return _decode(raw) if raw is not None else None

    async def pin_first(self, pin: Pin) -> Pin:
        try:
            created = await self.client.hsetnx(self.key, pin.field, _encode(pin))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"pin store unavailable: {exc}") from None
        if created:
            return pin
        current = await self.get(pin.server, pin.tool)
        return current if current is not None else pin

    async def put(self, pin: Pin) -> None:
        try:
            await self.client.hset(self.key, pin.field, _encode(pin))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"pin store unavailable: {exc}") from None

    async def remove(self, server: str, tool: str) -> bool:
        try:
            return bool(await self.client.hdel(self.key, f"{server}/{tool}"))
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"pin store unavailable: {exc}") from None

    async def all(self, server: str = "") -> list[Pin]:
        try:
            entries = await self.client.hgetall(self.key)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"pin store unavailable: {exc}") from None
        pins = [_decode(value) for value in entries.values()]
        return sorted((p for p in pins if not server or p.server == server), key=lambda p: p.field)


def _encode(pin: Pin) -> str:
    return json.dumps(asdict(pin), sort_keys=True)


def _decode(raw: bytes | str) -> Pin:
    return Pin(**json.loads(as_text(raw)))
