"""Agents over HTTP: create, list, read, run, suspend, resume, terminate, history; refusals change nothing."""

from __future__ import annotations

import pytest

from .conftest import ApiStack, agent_dsl, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_agent_lifecycle_over_http(api_stack: ApiStack) -> None:
    http = api_stack.admin
    created = await http.post("/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("alpha")}})
    assert created.status_code == 201, created.text
    agent = created.json()["agent"]
    assert agent["state"] == "AGENT_STATE_READY"
    agent_id = agent["agent_id"]
    listed = await http.get("/v1/agents", params={"state": "ready"})
    assert agent_id in [a["agent_id"] for a in listed.json()["agents"]]
    assert (await http.get(f"/v1/agents/{agent_id}")).json()["definition"]["metadata"]["name"] == "alpha"
