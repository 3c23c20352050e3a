"""Sandboxed stdio MCP servers: launched by the orchestrator in hardened containers (runc and runsc),
by configuration or because policy requires a tier, spoken to over NATS; the gateway never touches Docker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest
import pytest_asyncio
from symbi_testing.checks import eventually
from symbi_testing.mcp_support import McpStack, signed_config

from symbi_proto.v1 import sandbox_pb2
from symbi_proto.v1 import tools_pb2 as T
from symbi_sandbox_orchestrator.service import SPEC as ORCHESTRATOR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
NODE = "mcp-sandbox-test"


def session_containers() -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": ["symbi.node=" + NODE, "symbi.session"]})
        return [c.name for c in found]
    finally:
        client.close()


@pytest_asyncio.fixture
async def sandboxed(mcp: McpStack) -> AsyncIterator[McpStack]:
    mcp.tmp.chmod(0o755)  # the sandbox's user (65534) reads the server's config from a read-only mount
    overrides = {"sandbox.runner": "docker", "sandbox.node": NODE, "sandbox.memory_mb": 4096, "sandbox.cpu_cores": 2,
                 "sandbox.session_mount_roots": [str(mcp.tmp)]}  # fmt: skip
    await mcp.run_service(ORCHESTRATOR, mcp.settings.with_overrides(overrides))
    mcp.settings = mcp.settings.with_overrides({"mcp.sandbox_node": NODE})
    yield mcp
    if mcp.runner is not None:
        await mcp.runner.shutdown()
    await eventually(lambda: not session_containers(), timeout_s=30, what="session containers removed")


def whoami(result: T.ToolCallResult) -> dict[str, Any]:
    assert not result.HasField("error"), result.error
    return json.loads(result.structured_content_json)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("tier", "runtime"), [("Tier1", "runc"), ("Tier2", "runsc")])
async def test_a_configured_sandboxed_server_runs_in_a_hardened_container(
    sandboxed: McpStack, tier: str, runtime: str
) -> None:
    mcp = sandboxed
    config = await signed_config(mcp.signer)
    server = mcp.stdio("boxed", config, sandboxed=True, sandbox_tier=tier, sandbox_mounts=[str(mcp.tmp)])
    await mcp.start([server])
    await mcp.connected("boxed", timeout_s=60)
    info = next(s for s in (await mcp.ops.servers()).servers if s.name == "boxed")
    assert info.sandboxed
    add = next(t for t in (await mcp.ops.list_tools("boxed")).tools if t.name == "add")
    assert add.verification.status == T.VERIFICATION_STATUS_VERIFIED
    seen = whoami(await mcp.ops.call("boxed", "whoami"))
    assert seen == {"uid": 65534, "hostname": "sandbox", "network": False}
    result = await mcp.ops.call("boxed", "add", {"a": 1, "b": 2})
    assert result.sandbox_tier == (sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER if tier == "Tier1"
                                   else sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR)  # fmt: skip
    client = docker.from_env()
    try:
        (container,) = client.containers.list(filters={"label": ["symbi.node=" + NODE, "symbi.mcp.server=boxed"]})
        assert container.attrs["HostConfig"]["Runtime"] == runtime
        assert container.attrs["HostConfig"]["ReadonlyRootfs"]
    finally:
        client.close()


async def test_policy_requiring_a_tier_moves_the_call_into_a_sandbox(sandboxed: McpStack) -> None:
    mcp = sandboxed
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("local", config, sandbox_mounts=[str(mcp.tmp)])])
    await mcp.connected("local")
    outside = whoami(await mcp.ops.call("local", "whoami"))
    assert outside["uid"] != 65534, "without a condition the server runs as configured, unsandboxed"
    forced = await mcp.client(actor="tier1-caller").call("local", "whoami")
    assert whoami(forced) == {"uid": 65534, "hostname": "sandbox", "network": False}
    assert forced.sandbox_tier == sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER
    assert len(session_containers()) == 1
    again = await mcp.client(actor="tier1-caller").call("local", "add", {"a": 2, "b": 3})
    assert json.loads(again.structured_content_json) == {"result": 5}
    assert len(session_containers()) == 1, "the sandboxed instance is reused"


async def test_without_an_orchestrator_a_sandboxed_server_fails_closed(mcp: McpStack) -> None:
    mcp.settings = mcp.settings.with_overrides({"mcp.sandbox_node": "nowhere"})
    await mcp.start([mcp.stdio("boxed", await signed_config(mcp.signer), sandboxed=True)])

    async def reported() -> bool:
        server = next(s for s in (await mcp.ops.servers()).servers if s.name == "boxed")
        return server.state == T.MCP_SERVER_STATE_DISCONNECTED

    await eventually(reported, timeout_s=30, what="the sandboxed server reported down")
    server = next(s for s in (await mcp.ops.servers()).servers if s.name == "boxed")
    assert "no sandbox on node nowhere" in server.detail
    assert (await mcp.ops.call("boxed", "add", {"a": 1, "b": 2})).error.code == "unavailable"
