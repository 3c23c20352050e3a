"""API keys: stored only as salted digests, checked in constant time, scoped, revocable; the bootstrap key;
``symbi api-key``."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from symbi_api import keys as K
from symbi_api.bootstrap import ensure_admin_key, read_or_create_key_file
from symbi_cli.main import main
from symbi_common.errors import ConfigError, InvalidArgumentError, UnauthenticatedError
from symbi_common.settings import Settings


@pytest.fixture
async def store(redis_url: str, fresh_redis: None) -> AsyncIterator[K.KeyStore]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield K.KeyStore(client)
    finally:
        await client.aclose()


async def test_keys_are_stored_only_as_salted_digests(store: K.KeyStore, redis_url: str) -> None:
    spec = K.KeySpec("ci-bot", ["agents:read", "context:*"], kind="service", roles=["ci"])
    record, token = await store.create(spec, created_by="pytest")
    assert token.startswith("symbi_")
    assert len(token) == 49
    raw = await store.client.get(K.PREFIX + record.key_id)
    assert raw is not None
    assert token.encode() not in raw  # only salt and HMAC are at rest
    assert record.digest not in json.dumps(record.public())
    assert (await store.authenticate(token)).name == "ci-bot"

    other, other_token = await store.create(spec, created_by="pytest")
    assert other.salt != record.salt  # the same spec, a different salt and key
    assert other_token != token
    with pytest.raises(UnauthenticatedError, match="invalid API key"):
        await store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B"))
    forged = K.ApiKey.from_json(raw)
    tampered = forged.to_json().replace(forged.digest, "00" * 32)
    await store.client.set(K.PREFIX + record.key_id, tampered)
    with pytest.raises(UnauthenticatedError, match="invalid API key"):
        await store.authenticate(token)  # a digest that does not match refuses the key
    await store.client.set(K.PREFIX + record.key_id, raw)
    revoked = await store.revoke(record.key_id, by="pytest")
    assert revoked.revoked
    with pytest.raises(UnauthenticatedError, match="invalid API key"):
        await store.authenticate(token)
    assert [k.revoked for k in await store.list()] == [True, False]


def test_scopes() -> None:
    assert K.grants(["agents:read"], "agents:read")
    assert not K.grants(["agents:read"], "agents:write")
    assert K.grants(["agents:*"], "agents:write")
    assert not K.grants(["agents:*"], "policies:read")
    assert K.grants(["admin"], "keys:admin")
    assert K.check_scopes(["context:*", "audit:read", "audit:read"]) == ["audit:read", "context:*"]
    for bad in (["agents:delete"], ["nothing:*"], [], ["*"]):
        with pytest.raises(InvalidArgumentError):
            K.check_scopes(bad)
    with pytest.raises(InvalidArgumentError, match="kind"):
        K.KeySpec("x", ["admin"], kind="robot").checked()


async def test_bootstrap_admin_key(store: K.KeyStore, settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "api" / "admin.key"
    wired = settings.with_overrides({"api.admin_key_file": path})
    made = await ensure_admin_key(store, wired)
    assert made is not None
    assert made.file == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert (await store.authenticate(token)).scopes == ("admin",)
    again = await ensure_admin_key(store, wired)  # a restart: the same key, registered once
    assert again is not None
    assert again.key.key_id == made.key.key_id
    assert len(await store.list()) == 1
    await store.revoke(made.key.key_id, by="pytest")
    await ensure_admin_key(store, wired)
    with pytest.raises(UnauthenticatedError):  # a revoked bootstrap key stays revoked
        await store.authenticate(token)

    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_or_create_key_file(path)
    with pytest.raises(ConfigError, match="at least 32"):
        await ensure_admin_key(store, settings.with_overrides({"api.admin_key": "too-short"}))
    given = "operator-chosen-" + "k" * 24
    configured = await ensure_admin_key(store, settings.with_overrides({"api.admin_key": given}))
    assert configured is not None
    assert configured.file is None
    assert (await store.authenticate(given)).name == "admin"


def test_api_key_command(redis_url: str, fresh_redis: None, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["api-key", "--redis-url", redis_url]
    assert main([*base, "--json", "create", "ops", "--scope", "agents:read", "--role", "operator"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["agents:read"]
    assert "digest" not in created
    assert "salt" not in created

    async def check() -> K.ApiKey:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            return await K.KeyStore(client).authenticate(created["key"])
        finally:
            await client.aclose()

    assert asyncio.run(check()).roles == ("operator",)
    assert main([*base, "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{created['key_id']}  active" in listing
    assert created["key"] not in listing
    assert main([*base, "revoke", created["key_id"]]) == 0
    assert "revoked" in capsys.readouterr().out
    with pytest.raises(UnauthenticatedError):
        asyncio.run(check())
    assert main([*base, "create", "x", "--scope", "agents:fly"]) == 1
    assert "unknown scope 'agents:fly'" in capsys.readouterr().err
