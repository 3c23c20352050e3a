"""Tools listed, verified and called through the gateway over stdio and streamable HTTP, with audit."""

from __future__ import annotations

import hashlib

import pytest
from symbi_testing.mcp_support import McpStack, result_json, signed_config
from symbi_testing.streams import audit_events, details, wait_for_audit

from symbi_mcp_gateway.signatures import canonical_json
from symbi_proto.v1 import audit_pb2
from symbi_proto.v1 import tools_pb2 as T

pytestmark = pytest.mark.integration


async def test_tools_over_stdio_and_http_are_verified_called_and_audited(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("local", config), mcp.http("remote", config)])
    await mcp.connected("local", "remote")

    listing = await mcp.ops.list_tools()
    offered = {(t.server, t.name): t for t in listing.tools}
    for server in ("local", "remote"):
        add = offered[(server, "add")]
        assert add.verification.status == T.VERIFICATION_STATUS_VERIFIED
        assert add.verification.coverage == "symbi-descriptor-v1"
        assert add.verification.key_fingerprint == mcp.signer.fingerprint
        assert add.verification.pinned
        assert add.verification.offered
        assert add.annotations["readOnlyHint"] == "true"

    for server in ("local", "remote"):
        result = await mcp.ops.call(server, "add", {"a": 2, "b": 40}, correlation_id=f"corr-{server}")
        assert not result.HasField("error"), result.error
        assert not result.is_error
        assert result_json(result) == {"result": 42}
        assert result.content[0].text == "42"
        whole = {"content": [{"type": "text", "text": "42"}], "structuredContent": {"result": 42}, "isError": False}
        assert result.result_sha256 == hashlib.sha256(canonical_json(whole)).digest()
        assert result.correlation_id == f"corr-{server}"
        assert result.decision.WhichOneof("outcome") == "allow"

    decisions = await wait_for_audit(mcp.nc, "tool.decision", lambda e: e.correlation_id == "corr-remote")
    outcomes = await wait_for_audit(mcp.nc, "tool.outcome", lambda e: e.correlation_id == "corr-remote")
    decision, outcome = details(decisions[0]), details(outcomes[0])
    assert decision["allowed"] is True
    assert decision["tool"] == "remote/add"
    assert decision["decision_id"] == result.decision.decision_id
    assert outcome["success"] is True
    assert outcome["result_sha256"] == result.result_sha256.hex()
    assert outcome["duration_ms"] > 0
    pinned = await wait_for_audit(mcp.nc, "tool.pinned", lambda e: details(e)["tool"] == "add", count=2)
    assert {details(e)["server"] for e in pinned} == {"local", "remote"}
    pins = {(p.server, p.tool): p for p in (await mcp.ops.pins()).pins}
    assert pins[("local", "add")].key_fingerprint == mcp.signer.fingerprint
    assert pins[("local", "add")].pinned_by == "tofu"


async def test_tool_errors_timeouts_and_argument_checks(mcp: McpStack) -> None:
    await mcp.start([mcp.stdio("local", await signed_config(mcp.signer))])
    await mcp.connected("local")
    failed = await mcp.ops.call("local", "fail")
    assert failed.is_error
    assert not failed.HasField("error")
    assert "Error executing tool fail" in failed.content[0].text

    slow = await mcp.ops.call("local", "sleep", {"seconds": 5}, timeout_s=0.5)
    assert slow.error.code == "deadline_exceeded"

    wrong = await mcp.ops.call("local", "add", {"a": "two"})
    assert wrong.error.code == "invalid_argument"
    assert "a: 'two' is not of type 'integer'" in wrong.error.message
    assert "b" in wrong.error.message

    unknown = await mcp.ops.call("local", "nope")
    assert unknown.error.code == "not_found"
    still = await mcp.ops.call("local", "add", {"a": 1, "b": 1})
    assert result_json(still) == {"result": 2}
    outcomes = [details(e) for e in await audit_events(mcp.nc, "tool.outcome")]
    assert {o.get("error") for o in outcomes} >= {"deadline_exceeded", "invalid_argument", "not_found"}


async def test_results_are_cut_to_the_requested_size(mcp: McpStack) -> None:
    await mcp.start([mcp.stdio("local", await signed_config(mcp.signer))])
    await mcp.connected("local")
    result = await mcp.ops.call("local", "big", {"n": 5000}, max_result_bytes=1024)
    assert result.truncated
    assert len(result.content[0].text) == 1024
    assert result.structured_content_json == "", "a structured result that does not fit is left out"


async def test_resources_are_listed_and_read(mcp: McpStack) -> None:
    await mcp.start([mcp.stdio("local", await signed_config(mcp.signer))])
    await mcp.connected("local")
    listing = await mcp.ops.list_resources()
    assert {r.uri for r in listing.resources} == {"demo://hello", "demo://big"}
    hello = await mcp.ops.read_resource("local", "demo://hello")
    assert hello.contents[0].text == "hello world"
    assert not hello.truncated
    big = await mcp.ops.read_resource("local", "demo://big", max_bytes=100)
    assert big.truncated
    assert len(big.contents[0].text) == 100
    denied = await mcp.client(actor="mallory", roles=()).read_resource("local", "demo://hello")
    assert denied.error.code == "permission_denied"
    reads = await wait_for_audit(mcp.nc, "tool.decision", lambda e: details(e).get("resource") == "local/demo://hello",
                                 count=2)  # fmt: skip
    assert {e.outcome for e in reads} == {audit_pb2.AUDIT_OUTCOME_SUCCESS, audit_pb2.AUDIT_OUTCOME_DENIED}
