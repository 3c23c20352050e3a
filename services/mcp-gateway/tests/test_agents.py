"""Agents as callers: tenant and capabilities come from their lifecycle record; listing is filtered by policy."""

from __future__ import annotations

import pytest
from symbi_testing.mcp_support import McpStack, result_json, signed_config
from symbi_testing.streams import details, wait_for_audit

from symbi_common.lifecycle_client import LifecycleClient
from symbi_lifecycle.service import SPEC as LIFECYCLE
from symbi_proto.v1 import agent_pb2

pytestmark = pytest.mark.integration


def definition(name: str, capabilities: str) -> agent_pb2.DefinitionSource:
    text = f"""
agent {name}(x: int) -> int {{
    capabilities = [{capabilities}]
    tenant = "acme"
    with sandbox = "Tier1", timeout = 5s, memory = "64MB", cpu = 0.1 {{
        command = ["true"]
    }}
}}
"""
    return agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name=f"{name}.symbi")


async def test_an_agent_calls_what_its_capabilities_allow(mcp: McpStack) -> None:
    await mcp.run_service(LIFECYCLE, mcp.settings.with_overrides({"lifecycle.extra_capabilities": ["demo_tools"]}))
    lifecycle = LifecycleClient(mcp.nc, actor="tester")
    able = (await lifecycle.create_from(definition("able", '"demo_tools"'))).agent
    unable = (await lifecycle.create_from(definition("unable", ""))).agent
    assert able.state == agent_pb2.AGENT_STATE_READY
    await mcp.start([mcp.stdio("demo", await signed_config(mcp.signer))])
    await mcp.connected("demo")

    agent = mcp.client(actor="", roles=(), agent_id=able.agent_id)
    assert {t.name for t in (await agent.list_tools()).tools} >= {"add", "echo"}
    result = await agent.call("demo", "add", {"a": 3, "b": 4})
    assert result_json(result) == {"result": 7}
    outcome = await wait_for_audit(mcp.nc, "tool.outcome", lambda e: e.correlation_id == result.correlation_id)
    assert outcome[0].agent_id == able.agent_id
    assert outcome[0].tenant == "acme"

    other = mcp.client(actor="", roles=(), agent_id=unable.agent_id)
    assert not (await other.list_tools()).tools, "an agent sees only the tools policy lets it call"
    assert (await other.call("demo", "add", {"a": 3, "b": 4})).error.code == "permission_denied"
    ghost = mcp.client(actor="", roles=(), agent_id="01000000-0000-7000-8000-000000000000")
    refused = await ghost.call("demo", "add", {"a": 3, "b": 4})
    assert refused.error.code == "permission_denied"
    assert "not known" in refused.error.message
    await wait_for_audit(mcp.nc, "tool.decision", lambda e: details(e)["allowed"] is False)
