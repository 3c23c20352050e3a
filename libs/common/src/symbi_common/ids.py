"""Identifiers: time-ordered UUIDv7 strings (RFC 9562) and instance names.

UUIDv7 sorts by creation time, which keeps audit, task and message ids in order in
indexes and logs while staying globally unique without coordination.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid

from symbi_common.errors import InvalidArgumentError


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A version-7 UUID: 48-bit Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise InvalidArgumentError(f"timestamp {ms} ms does not fit in 48 bits")
    rand = secrets.randbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def new_id() -> str:
    """A new time-ordered id as a canonical UUID string (the same layout as ``uuid7``).

    Built from bytes rather than through ``uuid.UUID``: ids are minted on hot paths
    (every policy decision, audit event and message), and this is about twice as fast.
    """
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)  # version 7
    raw[8] = 0x80 | (raw[8] & 0x3F)  # RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_id(value: str, *, what: str = "id") -> str:
    """Validate a UUID string and return it in canonical lower-case form."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgumentError(f"{what} {value!r} is not a UUID") from None


def uuid7_time_ms(value: str) -> int:
    """The creation time in Unix milliseconds encoded in a UUIDv7 string."""
    parsed = uuid.UUID(parse_id(value))
    if parsed.version != 7:
        raise InvalidArgumentError(f"{value!r} is not a version-7 UUID")
    return parsed.int >> 80


def instance_id(service: str) -> str:
    """A name for one running replica: service, host, pid and a short random suffix."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
