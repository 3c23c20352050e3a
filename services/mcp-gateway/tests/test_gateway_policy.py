"""Every call passes policy at tool_invoke; its conditions are applied; decision and outcome are audited."""

from __future__ import annotations

from typing import Any

import pytest
from symbi_testing.mcp_support import McpStack, result_json, signed_config
from symbi_testing.streams import audit_events, details, wait_for_audit

from symbi_proto.v1 import audit_pb2

pytestmark = pytest.mark.integration


async def started(mcp: McpStack, **mcp_settings: Any) -> None:
    await mcp.start([mcp.stdio("demo", await signed_config(mcp.signer))], **mcp_settings)
    await mcp.connected("demo")


async def test_a_denied_call_never_reaches_the_server_and_is_audited(mcp: McpStack) -> None:
    await started(mcp)
    denied = await mcp.client(actor="mallory", roles=("operator",)).call("demo", "echo", {"text": "hi"})
    assert denied.error.code == "permission_denied"
    assert denied.error.message == "mallory may not use tools"
    assert denied.decision.deny.reason == "mallory may not use tools"
    events = await wait_for_audit(mcp.nc, "tool.decision", lambda e: details(e)["allowed"] is False)
    assert events[0].outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert details(events[0])["decision_id"] == denied.decision.decision_id
    nobody = await mcp.client(actor="visitor", roles=()).call("demo", "echo", {"text": "hi"})
    assert nobody.error.code == "permission_denied", "deny by default"


async def test_redaction_is_applied_before_the_server_sees_the_arguments(mcp: McpStack) -> None:
    await started(mcp)
    result = await mcp.client(actor="redactee").call("demo", "echo", {"text": "my password is hunter2"})
    assert result.content[0].text == "[redacted]"
    outcome = await wait_for_audit(mcp.nc, "tool.outcome", lambda e: details(e).get("redacted") == ["text"])
    assert "hunter2" not in str(details(outcome[0]))


async def test_rate_limits_from_policy_and_defaults(mcp: McpStack) -> None:
    await started(mcp, tool_calls_per_minute=3)
    limited = mcp.client(actor="limited")
    first = [await limited.call("demo", "add", {"a": 1, "b": 1}) for _ in range(3)]
    assert [r.HasField("error") for r in first] == [False, False, True]
    assert first[2].error.code == "resource_exhausted"
    assert first[2].error.metadata["bucket"] == "test:limited"
    default = [await mcp.ops.call("demo", "add", {"a": 1, "b": 1}) for _ in range(4)]
    assert [r.error.code for r in default] == ["", "", "", "resource_exhausted"]
    assert "mcp:ops:tool:demo/add" in default[3].error.metadata["bucket"]


async def test_max_bytes_from_policy_caps_the_result(mcp: McpStack) -> None:
    await started(mcp)
    result = await mcp.client(actor="small").call("demo", "echo", {"text": "x" * 100})
    assert result.truncated
    assert result.content[0].text == "x" * 16


async def test_required_audit_records_inputs_and_outputs_durably(mcp: McpStack) -> None:
    await started(mcp)
    result = await mcp.client(actor="audited").call("demo", "add", {"a": 20, "b": 22})
    assert result_json(result) == {"result": 42}
    decision = (await audit_events(mcp.nc, "tool.decision"))[-1]
    assert details(decision)["arguments"] == {"a": 20, "b": 22}
    assert details(decision)["categories"] == ["tests"]
    outcome = await wait_for_audit(mcp.nc, "tool.outcome", lambda e: e.correlation_id == result.correlation_id)
    assert details(outcome[0])["result_preview"] == '{"result": 42}'


async def test_conditions_the_gateway_cannot_honour_fail_closed(mcp: McpStack) -> None:
    await started(mcp)
    result = await mcp.client(actor="approver-needed").call("demo", "add", {"a": 1, "b": 1})
    assert result.error.code == "permission_denied"
    assert "require_human_approval" in result.error.message


async def test_a_sandbox_tier_required_for_an_http_server_is_refused(mcp: McpStack) -> None:
    await mcp.start([mcp.http("remote", await signed_config(mcp.signer))])
    await mcp.connected("remote")
    result = await mcp.client(actor="tier1-caller").call("remote", "add", {"a": 1, "b": 1})
    assert result.error.code == "failed_precondition"
    assert "cannot be sandboxed" in result.error.message


async def test_an_unreachable_policy_service_denies(mcp: McpStack) -> None:
    mcp.settings = mcp.settings.with_overrides({"policy.addr": "127.0.0.1:1", "policy.decision_timeout_s": 0.5})
    await started(mcp)
    result = await mcp.ops.call("demo", "add", {"a": 1, "b": 1})
    assert result.error.code == "permission_denied"
    assert "unavailable" in result.error.message
