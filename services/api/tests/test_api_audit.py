"""The audit trail over HTTP: query, live stream (SSE), verify, checkpoints, proofs, keys, reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from symbi_testing.checks import eventually

from .conftest import ApiStack, agent_dsl, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def sse_events(lines: AsyncIterator[str], count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next ``count`` events of a server-sent event stream."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((kind, json.loads(line.removeprefix("data: "))))
            if len(events) >= count:
                break
    return events


async def test_stream_query_and_proofs(api_stack: ApiStack) -> None:
    auditor = api_stack.client(await api_stack.key("audit:read", name="audrey"))
    params: dict[str, str | int] = {"event_type": "api.*", "max_events": 1}
    async with auditor.stream("GET", "/v1/audit/stream", params=params) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        first = await anext(lines)
        assert first == ": subscribed"  # listening: what happens from now on is streamed
        made = await api_stack.admin.post("/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("eps")}})
        assert made.status_code == 201
        (kind, event), *_ = await asyncio.wait_for(sse_events(lines, 1), 15)
    assert kind == "audit"
    assert event["event_type"] == "api.request"
    assert event["correlation_id"] == made.headers["x-request-id"]

    await api_stack.audited(made.headers["x-request-id"])
    found = await auditor.get("/v1/audit/events", params={"event_type": "api.request", "newest_first": True})
    assert found.status_code == 200
    assert int(found.json()["total"]) >= 1
    mine = [e for e in found.json()["events"] if e["correlation_id"] == made.headers["x-request-id"]]
    assert mine[0]["details"]["route"] == "/v1/agents"
    event_id, sequence = mine[0]["event_id"], int(mine[0]["sequence"])

    async def covered() -> bool:
        latest = (await auditor.get("/v1/audit/checkpoints/latest")).json()
        return int(latest.get("tree_size", 0)) > sequence

    await eventually(covered, timeout_s=10, what="a checkpoint covering the event")
    proof = await auditor.get("/v1/audit/proofs/inclusion", params={"event_id": event_id})
    assert proof.status_code == 200, proof.text
    assert int(proof.json()["proof"]["leaf_index"]) == sequence
    checkpoints = (await auditor.get("/v1/audit/checkpoints")).json()["checkpoints"]
    sizes = sorted({int(c["tree_size"]) for c in checkpoints})
    assert sizes
    consistency = await auditor.get("/v1/audit/proofs/consistency", params={"first": sizes[0]})
    assert consistency.status_code == 200, consistency.text
    assert int(consistency.json()["proof"]["first_tree_size"]) == sizes[0]
    keys = (await auditor.get("/v1/audit/keys")).json()["keys"]
    assert keys
    assert keys[0]["key_id"]
    verified = (await auditor.get("/v1/audit/verify")).json()
    assert verified["ok"] is True
    assert int(verified["events_checked"]) > sequence

    report = await auditor.post("/v1/audit/reports", json={"framework": "sox", "format": "md"})
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/markdown")
    assert report.headers["x-symbi-integrity"] == "ok"
    assert "SOX" in report.text or "sox" in report.text

    neither = await auditor.get("/v1/audit/proofs/inclusion")
    assert neither.status_code == 422
    assert error_of(neither)["code"] == "invalid_argument"
    unknown = await auditor.get(
        "/v1/audit/proofs/inclusion", params={"event_id": "00000000-0000-7000-8000-000000000000"}
    )
    assert unknown.status_code == 404, unknown.text
    refused = await api_stack.client(await api_stack.key("agents:read")).get("/v1/audit/events")
    assert refused.status_code == 403
