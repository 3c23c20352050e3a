"""Context, tools, messaging and system status over HTTP, traced across services and counted."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from symbi_testing.checks import eventually

from symbi_common import catalog
from symbi_proto.v1 import audit_pb2

from .conftest import ApiStack, agent_dsl, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

HANDBOOK = """# Handbook

## Backups
Backups are kept for 35 days and tested every quarter.

## Holidays
Every employee gets 25 days of holiday a year.
"""


async def test_context_store_search_ask_ingest_delete(api_stack: ApiStack) -> None:
    made = await api_stack.admin.post("/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("zeta")}})
    agent_id = made.json()["agent"]["agent_id"]
    writer = api_stack.client(await api_stack.key("context:*", name="cora", roles=("operator",)))
    stored = await writer.post(
        f"/v1/agents/{agent_id}/context", json={"kind": "long_term", "content": "The deploy key rotates monthly."}
    )
    assert stored.status_code == 201, stored.text
    context_id = stored.json()["context_id"]
    ingested = await writer.post(f"/v1/agents/{agent_id}/documents", json={"source": "handbook.md", "text": HANDBOOK})
    assert ingested.status_code == 201, ingested.text
    assert ingested.json()["chunks"] >= 1

    found = await writer.post(f"/v1/agents/{agent_id}/context/search", json={"query": "how often is the key rotated"})
    assert found.status_code == 200, found.text
    assert found.json()["items"][0]["context_id"] == context_id
    answer = await writer.post(f"/v1/agents/{agent_id}/context/ask", json={"question": "How long are backups kept?"})
    assert answer.status_code == 200, answer.text
    assert "35 days" in answer.json()["answer"]
    assert answer.json()["citations"][0]["source"] == "handbook.md"
    knowledge = await writer.post(f"/v1/agents/{agent_id}/knowledge/search", json={"query": "backups"})
    assert knowledge.status_code == 200, knowledge.text

    deleted = await writer.delete(f"/v1/agents/{agent_id}/context/{context_id}")
    assert deleted.status_code == 200, deleted.text
    assert int(deleted.json()["deleted"]) == 1
    again = await writer.post(f"/v1/agents/{agent_id}/context/search", json={"query": "how often is the key rotated"})
    assert context_id not in [item["context_id"] for item in again.json()["items"]]
    reader = api_stack.client(await api_stack.key("context:read"))
    refused = await reader.post(f"/v1/agents/{agent_id}/context", json={"content": "sneaky"})
    assert refused.status_code == 403
    assert error_of(refused)["details"]["required_scope"] == "context:write"


async def test_tools_list_call_and_pins(api_stack: ApiStack) -> None:
    admin = api_stack.admin

    async def listed() -> bool:
        tools = (await admin.get("/v1/tools")).json()["tools"]
        return "add" in {t["name"] for t in tools}

    await eventually(listed, timeout_s=20, what="the demo server's tools are offered")
    servers = (await admin.get("/v1/tools/servers")).json()["servers"]
    assert servers[0]["name"] == "demo"
    called = await admin.post("/v1/tools/demo/add/call", json={"arguments": {"a": 2, "b": 3}})
    assert called.status_code == 200, called.text
    assert json.loads(called.json()["structured_content_json"]) == {"result": 5}
    assert called.json()["correlation_id"] == called.headers["x-request-id"]
    wrong = await admin.post("/v1/tools/demo/add/call", json={"arguments": {"a": "two"}})
    assert wrong.status_code == 422, wrong.text
    missing = await admin.post("/v1/tools/demo/nothing/call", json={})
    assert missing.status_code == 404, missing.text

    pins = (await admin.get("/v1/tools/pins", params={"server": "demo"})).json()["pins"]
    assert "add" in {p["tool"] for p in pins}  # pinned on first use, after its signature verified
    unpinned = await admin.delete("/v1/tools/demo/add/pin")
    assert unpinned.status_code == 200
    assert unpinned.json()["removed"] is True
    repinned = await admin.post("/v1/tools/demo/add/pin", json={})
    assert repinned.status_code == 200, repinned.text
    assert repinned.json()["pin"]["pinned_by"] == "admin"

    caller = api_stack.client(await api_stack.key("tools:call", name="tina", roles=("operator",)))
    denied = await caller.post("/v1/tools/demo/add/call", json={"arguments": {"a": 1, "b": 1}})
    assert denied.status_code == 403  # admitted by the API, refused by the gateway's tool_invoke policy
    event = await api_stack.audited(denied.headers["x-request-id"])
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_DENIED


async def test_messaging_system_health_metrics_and_traces(
    api_stack: ApiStack, span_exporter: InMemorySpanExporter
) -> None:
    ops = api_stack.client(await api_stack.key("messaging:read", "system:read"))
    stats = await ops.get("/v1/messaging/stats")
    assert stats.status_code == 200, stats.text
    assert "rejected_by_reason" in stats.json()
    letters = await ops.get("/v1/messaging/dead-letters")
    assert letters.status_code == 200
    assert letters.json()["dead_letters"] == []

    span_exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    status = await ops.get("/v1/system/status", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["status"] == "ok"
    for part in ("agents", "scheduler", "audit", "messaging", "policies"):
        assert body[part]["ok"] is True, (part, body[part])
    assert body["policies"]["value"]["ids"] == ["api-tests"]
    assert set(body["services"]["value"]["services"]) == set(catalog.SERVICE_NAMES)
    # One trace from the caller's traceparent through the API into the services it asked.
    traced = {s.name for s in span_exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id}
    assert "GET /v1/system/status" in traced
    assert "handle symbi.lifecycle.counts" in traced  # the lifecycle service's side of the NATS request
    assert "/symbi.v1.PolicyService/ListPolicies" in traced  # the policy service's side of the gRPC call

    assert (await api_stack.client().get("/health/live")).json() == {"status": "live"}
    assert (await api_stack.client().get("/health/ready")).status_code == 200
    registry = api_stack.runners["api"].metrics
    text = generate_latest(registry).decode()
    assert 'symbi_api_requests_total{method="GET",route="/v1/system/status",status="200"}' in text
    assert 'symbi_api_request_seconds_count{method="GET",route="/v1/messaging/stats"}' in text
