"""API keys: shown once, kept only as salted HMAC-SHA256 digests in Redis, checked in constant time.

A generated key is ``symbi_`` followed by 43 url-safe base64 characters (256 random
bits). Its **id** is the first 16 hex digits of its SHA-256: the lookup key in Redis,
shown in listings and audit records, and of no use for recovering the key. Per key,
Redis holds (JSON at ``symbi:api:key:<id>``, ids in the set ``symbi:api:keys``): a
random salt, ``HMAC-SHA256(salt, key)``, the principal it acts as (name, kind ``user``
or ``service``, roles, tenant), its scopes, its own rate limit, who created it and
when, and when it was revoked. A revoked key stays listed (and refused) so that a
bootstrap key, once revoked, is not silently registered again.

A fast keyed hash is the right tool here: the keys are random, so there is no
dictionary to try, and a password KDF would only add cost to every request. The
stored digest is compared with ``hmac.compare_digest``; unknown, malformed and
revoked keys get the same answer.

Scopes are ``<group>:<verb>`` (``agents:read``, ``agents:write``, ...); ``<group>:*``
grants every verb of a group and ``admin`` grants everything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from symbi_common.errors import InvalidArgumentError, NotFoundError, UnauthenticatedError, UnavailableError

PREFIX = "symbi:api:key:"
INDEX = "symbi:api:keys"
TOKEN_PREFIX = "symbi_"  # noqa: S105 - a prefix, not a secret
MIN_TOKEN_CHARS = 32
MAX_TOKEN_CHARS = 256

SCOPES: dict[str, str] = {
    "agents:read": "list and read agents, their history and tasks",
    "agents:write": "create agents, give them tasks, suspend, resume and terminate them",
    "policies:read": "list and read policies; evaluate, explain and dry-run requests",
    "policies:admin": "register, replace and delete policies",
    "audit:read": "query, stream and verify the audit trail; proofs, checkpoints, reports",
    "context:read": "search agents' memory and knowledge; ask questions",
    "context:write": "store, ingest and delete agents' memory and knowledge",
    "tools:read": "list MCP tools, servers and pins",
    "tools:call": "call MCP tools",
    "tools:admin": "pin and unpin tool keys",
    "messaging:read": "message bus statistics and dead letters",
    "system:read": "system status",
    "keys:admin": "create, list and revoke API keys",
    "admin": "everything",
}
GROUPS = frozenset(scope.split(":", 1)[0] for scope in SCOPES if ":" in scope)
KINDS = ("user", "service")


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, each known (or ``<group>:*``); an ``InvalidArgumentError`` names the first unknown one."""
    out = []
    for scope in scopes:
        group, _, verb = scope.partition(":")
        if scope not in SCOPES and not (verb == "*" and group in GROUPS):
            raise InvalidArgumentError(f"unknown scope {scope!r} (known: {', '.join(SCOPES)}, or <group>:*)")
        out.append(scope)
    if not out:
        raise InvalidArgumentError("a key needs at least one scope")
    return sorted(set(out))


def grants(held: Iterable[str], needed: str) -> bool:
    """Whether scopes ``held`` allow ``needed``."""
    have = set(held)
    return needed in have or "admin" in have or f"{needed.split(':', 1)[0]}:*" in have


def key_id_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def check_token(token: str) -> str:
    """A token that may be a key (length, printable ASCII); ``UnauthenticatedError`` otherwise."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise UnauthenticatedError("invalid API key")
    return token


def _digest(salt: bytes, token: str) -> bytes:
    return hmac.new(salt, token.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's record (never the key itself)."""

    key_id: str
    name: str
    kind: str
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    tenant: str = ""
    rate_limit_per_minute: int = 0
    """0: the configured default."""
    description: str = ""
    created_by: str = ""
    created_at: float = 0.0
    revoked_at: float = 0.0
    revoked_by: str = ""
    salt: str = field(default="", repr=False)
    digest: str = field(default="", repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0

    def public(self) -> dict[str, object]:
        """What may be shown: everything but salt and digest."""
        doc = asdict(self)
        doc.pop("salt")
        doc.pop("digest")
        doc["roles"], doc["scopes"] = list(self.roles), list(self.scopes)
        doc["revoked"] = self.revoked
        return doc

    def matches(self, token: str) -> bool:
        expected = bytes.fromhex(self.digest)
        return hmac.compare_digest(_digest(bytes.fromhex(self.salt), token), expected)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        doc = json.loads(raw)
        doc["roles"], doc["scopes"] = tuple(doc.get("roles", ())), tuple(doc.get("scopes", ()))
        return cls(**doc)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a new key may do."""

    name: str
    scopes: Sequence[str]
    kind: str = "user"
    roles: Sequence[str] = ()
    tenant: str = ""
    rate_limit_per_minute: int = 0
    description: str = ""

    def checked(self) -> KeySpec:
        if not self.name or len(self.name) > 128 or not self.name.isprintable():
            raise InvalidArgumentError("a key needs a name (printable, up to 128 characters)")
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.rate_limit_per_minute < 0:
            raise InvalidArgumentError("rate_limit_per_minute must not be negative")
        return replace(self, scopes=check_scopes(self.scopes), roles=sorted(set(self.roles)))


class KeyStore:
    """API keys in Redis, shared by every API replica and the ``symbi api-key`` command."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    def _record(self, token: str, spec: KeySpec, created_by: str) -> ApiKey:
        spec = spec.checked()
        salt = secrets.token_bytes(16)
        return ApiKey(
            key_id=key_id_of(token),
            name=spec.name,
            kind=spec.kind,
            roles=tuple(spec.roles),
            scopes=tuple(spec.scopes),
            tenant=spec.tenant,
            rate_limit_per_minute=spec.rate_limit_per_minute,
            description=spec.description,
            created_by=created_by,
            created_at=time.time(),
            salt=salt.hex(),
            digest=_digest(salt, token).hex(),
        )

    async def create(self, spec: KeySpec, *, created_by: str) -> tuple[ApiKey, str]:
        """A new key: its record and the key itself (shown this once, stored nowhere)."""
        token = new_token()
        record = self._record(token, spec, created_by)
        await self._put(record, only_new=True)
        return record, token

    async def register(self, token: str, spec: KeySpec, *, created_by: str) -> tuple[ApiKey, bool]:
        """Make sure ``token`` is a key (a bootstrap key); returns its record and whether it was added now."""
        if len(token) < MIN_TOKEN_CHARS:
            raise InvalidArgumentError(f"an API key needs at least {MIN_TOKEN_CHARS} characters")
        check_token(token)
        record = self._record(token, spec, created_by)
        if await self._put(record, only_new=True, exist_ok=True):
            return record, True
        existing = await self.get(record.key_id)
        return existing, False

    async def _put(self, record: ApiKey, *, only_new: bool = False, exist_ok: bool = False) -> bool:
        try:
            stored = await self.client.set(PREFIX + record.key_id, record.to_json(), nx=only_new)
            if stored:
                await self.client.sadd(INDEX, record.key_id)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"API key store unavailable: {exc}") from exc
        if not stored and not exist_ok:
            raise InvalidArgumentError("key id collision; try again")
        return bool(stored)

    async def get(self, key_id: str) -> ApiKey:
        try:
            raw = await self.client.get(PREFIX + key_id)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"API key store unavailable: {exc}") from exc
        if raw is None:
            raise NotFoundError(f"no API key {key_id}")
        return ApiKey.from_json(raw)

    async def list(self) -> list[ApiKey]:
        try:
            ids = sorted(m.decode() if isinstance(m, bytes) else m for m in await self.client.smembers(INDEX))
            raws = await self.client.mget([PREFIX + i for i in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"API key store unavailable: {exc}") from exc
        keys = [ApiKey.from_json(raw) for raw in raws if raw is not None]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke(self, key_id: str, *, by: str) -> ApiKey:
        record = await self.get(key_id)
        if record.revoked:
            return record
        revoked = replace(record, revoked_at=time.time(), revoked_by=by)
        await self._put(revoked)
        return revoked

    async def authenticate(self, token: str) -> ApiKey:
        """The record of a valid, unrevoked key; ``UnauthenticatedError`` (one message for every reason) if not."""
        check_token(token)
        try:
            record = await self.get(key_id_of(token))
        except NotFoundError:
            raise UnauthenticatedError("invalid API key") from None
        if not record.matches(token) or record.revoked:
            raise UnauthenticatedError("invalid API key")
        return record
