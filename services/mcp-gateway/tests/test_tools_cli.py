"""``symbi tools``: a publisher makes a key and signs a real server's tools; an operator lists, calls, pins."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys

import pytest
from symbi_testing.mcp_support import SERVER_SCRIPT, McpStack

from symbi_cli.main import main

pytestmark = pytest.mark.integration


async def symbi(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


async def test_publisher_and_operator_workflow(mcp: McpStack, capsys: pytest.CaptureFixture[str]) -> None:
    keys = mcp.tmp / "keys"
    code, out = await symbi(capsys, "tools", "keygen", str(keys), "--developer", "Symbi tests")
    assert code == 0
    fingerprint = out.split()[1]
    document = json.loads((keys / "schemapin.json").read_text())
    command = shlex.join([sys.executable, str(SERVER_SCRIPT)])
    signatures = mcp.tmp / "signatures.json"
    code, _ = await symbi(capsys, "tools", "sign", "--key", str(keys / "schemapin-private.pem"), "--command", command,
                          "--out", str(signatures))  # fmt: skip
    assert code == 0
    assert set(json.loads(signatures.read_text())["tools"]["add"]) == {"schema", "symbi-descriptor-v1"}

    await mcp.start([mcp.stdio("demo", signatures=str(signatures))])
    mcp.site.documents["/.well-known/schemapin.json"] = document  # the publisher's key, not the fixture's
    await mcp.connected("demo")
    nats = ("tools", "--nats-url", mcp.settings.nats.url, "--as", "ops", "--role", "operator")
    code, out = await symbi(capsys, *nats, "verify", "demo", "add")
    assert code == 0, out
    assert f"key {fingerprint}" in out
    code, out = await symbi(capsys, *nats, "list", "--server", "demo")
    assert "demo/add: verified (offered)" in out
    code, out = await symbi(capsys, *nats, "call", "demo", "add", '{"a": 20, "b": 22}')
    assert (code, out.strip()) == (0, "42")
    code, out = await symbi(capsys, *nats, "--json", "call", "demo", "add", '{"a": "x"}')
    assert code == 1
    assert json.loads(out)["error"]["code"] == "invalid_argument"
    code, out = await symbi(capsys, *nats, "pins", "--server", "demo")
    assert f"demo/add: {fingerprint}" in out
    code, out = await symbi(capsys, *nats, "pin", "demo", "add", "--fingerprint", fingerprint)
    assert (code, out.strip()) == (0, f"pinned demo/add to {fingerprint}: verified")
    code, out = await symbi(capsys, *nats, "unpin", "demo", "add")
    assert out.strip() == "removed"
    code, out = await symbi(capsys, *nats, "servers")
    assert out.startswith("demo: connected")
    code, out = await symbi(capsys, *nats, "read", "demo", "demo://hello")
    assert out.strip() == "hello world"
