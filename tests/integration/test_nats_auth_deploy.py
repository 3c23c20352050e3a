"""`symbi nats-auth init` makes what a NATS server outside `symbi up` needs, and it works on a real one.

The compose file's init step and the Helm chart's Secret use exactly these files: the
server's authorization block (given to nats-server with -c, beside -js), the services'
credentials and the agent-credential issuer.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from symbi_common import embedded, natsauth, natsio
from symbi_common.errors import PermissionDeniedError
from symbi_common.settings import NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def init(keys: Path, out: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "symbi_cli", "nats-auth", "init", str(keys), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


async def connects(url: str, creds: Path | None) -> None:
    nc = await natsio.connect(NatsSettings(url=url, connect_timeout_s=2, credentials=creds), "nats-auth-test")
    try:
        await nc.jetstream().account_info()  # the SYMBI account has JetStream
    finally:
        await nc.close()


def test_init_writes_working_authorization_and_keeps_its_keys(tmp_path: Path) -> None:
    keys, out = tmp_path / "keys", tmp_path / "out"
    first = init(keys, out)
    assert first.startswith("made operator ")
    assert sorted(p.name for p in out.iterdir()) == ["issuer.json", "nats-auth.conf", "service.creds"]
    assert not list(out.glob("*.nk"))  # the keys stay in KEYS
    for path in [*out.iterdir(), *keys.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700

    server = embedded.start_nats(tmp_path / "nats", config=(out / "nats-auth.conf").read_text())
    try:
        asyncio.run(connects(server.url, out / "service.creds"))
        with pytest.raises(PermissionDeniedError):
            asyncio.run(connects(server.url, None))
        agent = natsauth.CredentialIssuer.from_file(out / "issuer.json").for_agent("agent-1", ttl_s=60)
        agent_creds = natsauth.write_creds(tmp_path / "agent.creds", agent.creds())
        asyncio.run(agent_connects(server.url, agent_creds))

        again = init(keys, out)  # the same keys: the running server accepts the new service credentials
        assert again.startswith("reused operator ")
        assert again.split()[2] == first.split()[2]
        asyncio.run(connects(server.url, out / "service.creds"))
    finally:
        server.stop(5)


async def agent_connects(url: str, creds: Path) -> None:
    settings = NatsSettings(url=url, connect_timeout_s=2, credentials=creds)
    nc = await natsio.connect(settings, "agent-1", inbox_prefix=natsauth.agent_inbox_prefix("agent-1"))
    await nc.close()
