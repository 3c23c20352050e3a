"""Agents over HTTP: create, list, read, run, suspend, resume, terminate, history; refusals change nothing."""

from __future__ import annotations

import pytest
from symbi_testing.checks import eventually

from symbi_common.ids import new_id
from symbi_proto.v1 import agent_pb2, audit_pb2

from .conftest import ApiStack, agent_dsl, details, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_agent_lifecycle_over_http(api_stack: ApiStack) -> None:
    token = await api_stack.key("agents:*", name="olga", roles=("operator",))
    operator = api_stack.client(token)
    created = await operator.post(
        "/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("alpha", seconds=1)}}
    )
    assert created.status_code == 201, created.text
    agent = created.json()["agent"]
    assert agent["state"] == "AGENT_STATE_READY"
    agent_id = agent["agent_id"]
    record = await api_stack.lifecycle.get(agent_id)  # really there, behind the API
    assert record.definition.metadata.name == "alpha"
    assert (await api_stack.lifecycle.history(agent_id))[0].actor == "olga"

    listed = await operator.get("/v1/agents", params={"state": "ready", "name_prefix": "al"})
    assert [a["agent_id"] for a in listed.json()["agents"]] == [agent_id]
    assert (await operator.get(f"/v1/agents/{agent_id}")).json()["definition"]["metadata"]["name"] == "alpha"

    run = await operator.post(f"/v1/agents/{agent_id}/tasks", json={"priority": "high"})
    assert run.status_code == 202, run.text
    task_id = run.json()["task_id"]

    async def succeeded() -> bool:
        task = await operator.get(f"/v1/tasks/{task_id}")
        assert task.status_code == 200, task.text
        return bool(task.json()["state"] == "TASK_STATE_SUCCEEDED")

    await eventually(succeeded, timeout_s=15, what="the task succeeds")
    tasks = (await operator.get(f"/v1/agents/{agent_id}/tasks")).json()["tasks"]
    assert [t["task"]["task_id"] for t in tasks] == [task_id]
    status = (await operator.get(f"/v1/agents/{agent_id}/status")).json()
    assert status["state"] == "AGENT_STATE_READY"

    idle = await operator.post(f"/v1/agents/{agent_id}/suspend", json={"reason": "maintenance"})
    assert idle.status_code == 409  # only a running agent is suspended
    assert error_of(idle)["code"] == "conflict"
    second = (await operator.post(f"/v1/agents/{agent_id}/tasks", json={})).json()["task_id"]

    async def running() -> bool:
        return bool((await operator.get(f"/v1/tasks/{second}")).json()["state"] == "TASK_STATE_RUNNING")

    await eventually(running, timeout_s=15, what="the second task runs")
    suspended = await operator.post(f"/v1/agents/{agent_id}/suspend", json={"reason": "maintenance"})
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["agent"]["state"] == "AGENT_STATE_SUSPENDED"
    resumed = await operator.post(f"/v1/agents/{agent_id}/resume", json={})
    assert resumed.json()["agent"]["state"] in ("AGENT_STATE_RUNNING", "AGENT_STATE_READY")
    terminated = await operator.post(f"/v1/agents/{agent_id}/terminate", json={"reason": "done"})
    assert terminated.status_code == 200, terminated.text
    assert terminated.json()["agent"]["state"] == "AGENT_STATE_TERMINATED"
    assert terminated.json()["task_stopped"] is True
    history = (await operator.get(f"/v1/agents/{agent_id}/history")).json()["transitions"]
    states = [t["to_state"] for t in history]
    assert states[0] == "AGENT_STATE_INITIALIZING"
    assert "AGENT_STATE_SUSPENDED" in states
    assert states[-1] == "AGENT_STATE_TERMINATED"

    # Each mutation is one api.request event naming the key, the route and the admitting decision.
    event = await api_stack.audited(terminated.headers["x-request-id"])
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
    assert event.agent_id == agent_id
    assert details(event)["route"] == "/v1/agents/{agent_id}/terminate"
    assert details(event)["principal"] == "olga"
    assert details(event)["status"] == 200
    assert details(event)["admission"]["operation"] == "agents.terminate"
    assert details(event)["admission"]["matched_rule"] == "operators-operate"
    assert token not in str(event)
    assert "Bearer" not in str(event)


async def test_create_from_manifest_and_invalid_definitions(api_stack: ApiStack) -> None:
    http = api_stack.admin
    manifest = {
        "metadata": {"name": "beta", "version": "1.0.0"}, "capabilities": ["analyze_data"], "tenant": "t1",
        "with": {"sandbox": "Tier1", "timeout": "10s", "memory": "64MB"}, "task": {"command": ["true"]},
    }  # fmt: skip
    made = await http.post("/v1/agents", json={"manifest": manifest, "idempotency_key": "beta-1"})
    assert made.status_code == 201, made.text
    again = await http.post("/v1/agents", json={"manifest": manifest, "idempotency_key": "beta-1"})
    assert again.json()["agent"]["agent_id"] == made.json()["agent"]["agent_id"]

    checked = await http.post("/v1/agents", json={"manifest": manifest, "validate_only": True})
    assert checked.status_code == 200
    assert checked.json()["valid"] is True

    before = (await api_stack.lifecycle.counts()).total
    broken = await http.post(
        "/v1/agents", json={"source": {"format": "dsl", "text": "agent oops( {", "name": "x.symbi"}}
    )
    assert broken.status_code == 422
    error = error_of(broken)
    assert error["code"] == "invalid_argument"
    assert error["details"]["issues"][0]["location"]["line"] == 1
    both = await http.post("/v1/agents", json={"manifest": manifest, "source": {"format": "json", "text": "{}"}})
    assert both.status_code == 422
    assert "exactly one of source and manifest" in error_of(both)["message"]
    assert (await api_stack.lifecycle.counts()).total == before


async def test_policy_refusal_and_unknown_ids_change_nothing(api_stack: ApiStack) -> None:
    viewer = api_stack.client(await api_stack.key("agents:write", "agents:read", name="vic", roles=("viewer",)))
    before = (await api_stack.lifecycle.counts()).total
    refused = await viewer.post("/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("gamma")}})
    assert refused.status_code == 403
    error = error_of(refused)
    assert error["code"] == "permission_denied"
    assert error["details"]["deny_kind"] == "DENY_KIND_DEFAULT"
    assert error["details"]["operation"] == "agents.create"
    assert (await api_stack.lifecycle.counts()).total == before
    event = await api_stack.audited(refused.headers["x-request-id"])
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert details(event)["admission"]["allowed"] is False

    unknown = new_id()
    missing = await viewer.get(f"/v1/agents/{unknown}")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    for action in ("suspend", "resume", "terminate", "tasks"):
        response = await viewer.post(f"/v1/agents/{unknown}/{action}", json={})
        assert response.status_code == 404, response.text
    for path in (f"/v1/agents/{unknown}/history", f"/v1/agents/{unknown}/status", f"/v1/tasks/{unknown}"):
        assert (await viewer.get(path)).status_code == 404, path
    assert (await viewer.get("/v1/agents/not-an-id")).status_code == 422  # malformed: the lifecycle says so
    assert (await viewer.get("/v1/agents/bad id!")).status_code == 422


async def test_tenant_keys_see_only_their_tenant(api_stack: ApiStack) -> None:
    made = await api_stack.admin.post(
        "/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("delta", "t2")}}
    )
    other_id = made.json()["agent"]["agent_id"]
    confined = api_stack.client(await api_stack.key("agents:read", tenant="t9"))
    assert (await confined.get(f"/v1/agents/{other_id}")).status_code == 404
    listed = (await confined.get("/v1/agents")).json()["agents"]
    assert listed == []
    record = await api_stack.lifecycle.get(other_id)
    assert record.state == agent_pb2.AGENT_STATE_READY
