"""Discovery: servers from registry files (watched) and NATS announcements (with TTL and withdrawal)."""

from __future__ import annotations

import sys

import pytest
from symbi_testing.checks import eventually
from symbi_testing.mcp_support import SERVER_SCRIPT, HttpMcpServer, McpStack, signed_config, write_config

from symbi_common import subjects
from symbi_proto.v1 import tools_pb2 as T

pytestmark = pytest.mark.integration


async def names(mcp: McpStack) -> dict[str, T.McpServer]:
    return {s.name: s for s in (await mcp.ops.servers()).servers}


async def test_registry_files_are_read_and_watched(mcp: McpStack) -> None:
    config = write_config(mcp.tmp / "demo.json", await signed_config(mcp.signer))
    registry = mcp.tmp / "registry"
    registry.mkdir()
    command = f'["{sys.executable}", "{SERVER_SCRIPT}", "{config}"]'
    (registry / "a.toml").write_text(
        f'[[servers]]\nname = "from-file"\ncommand = {command}\nschemapin_domain = "{mcp.site.base_url}"\n'
    )
    (registry / "broken.json").write_text('{"servers": [{"name": "no command"}]}')
    await mcp.start([], discovery_enabled=True, registry_path=str(registry))
    await mcp.connected("from-file")
    server = (await names(mcp))["from-file"]
    assert server.source == f"registry:{registry / 'a.toml'}"
    assert any(t.name == "add" for t in (await mcp.ops.list_tools("from-file")).tools)
    assert "broken.json" in str((await mcp.runner.health.snapshot()).recent_errors)  # type: ignore[union-attr]

    (registry / "a.toml").write_text("servers = []\n")

    async def gone() -> bool:
        return "from-file" not in await names(mcp)

    await eventually(gone, timeout_s=15, what="the server removed with its registry entry")


async def test_announced_servers_come_and_go(mcp: McpStack) -> None:
    remote = HttpMcpServer(write_config(mcp.tmp / "remote.json", await signed_config(mcp.signer)))
    mcp.http_servers.append(remote)
    await mcp.start([], discovery_enabled=True)

    async def announce(name: str, *, ttl_s: float = 0, withdrawn: bool = False, **server: object) -> None:
        note = T.McpServerAnnouncement(announced_by="pytest", withdrawn=withdrawn)
        note.server.name = name
        for key, value in server.items():
            if isinstance(value, list):
                getattr(note.server, key).extend(value)
            else:
                setattr(note.server, key, value)
        if ttl_s:
            note.ttl.FromNanoseconds(int(ttl_s * 1e9))
        await mcp.nc.publish(subjects.TOOLS_ANNOUNCEMENTS, note.SerializeToString())

    http = T.MCP_TRANSPORT_STREAMABLE_HTTP
    await announce("announced", transport=http, url=remote.url, schemapin_domain=mcp.site.base_url)
    await mcp.connected("announced")
    assert (await names(mcp))["announced"].source == "announcement:pytest"
    assert any(t.name == "add" for t in (await mcp.ops.list_tools("announced")).tools)

    await announce("stdio-announced", transport=T.MCP_TRANSPORT_STDIO, command=["/bin/sh", "-c", "id"])

    async def listed() -> bool:
        return "stdio-announced" in await names(mcp)

    await eventually(listed, what="the stdio announcement listed")
    assert (await names(mcp))["stdio-announced"].sandboxed, "an announced command never runs on the gateway's host"

    await announce("short-lived", transport=http, url=remote.url, ttl_s=1.0)
    await eventually(lambda: _has(mcp, "short-lived"), what="the short-lived server listed")
    await eventually(lambda: _lacks(mcp, "short-lived"), timeout_s=10, what="the announcement lapsed")

    await announce("announced", withdrawn=True)
    await eventually(lambda: _lacks(mcp, "announced"), what="the withdrawn server removed")


async def _has(mcp: McpStack, name: str) -> bool:
    return name in await names(mcp)


async def _lacks(mcp: McpStack, name: str) -> bool:
    return name not in await names(mcp)
