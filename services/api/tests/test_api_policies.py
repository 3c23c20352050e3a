"""Policies over HTTP: register, read, replace, delete, evaluate, explain, dry-run; refusals change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from symbi_common.policy_client import PolicyClient

from .conftest import ApiStack, details, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SAMPLE = """
id: %s
rules:
  - name: readers-read
    effect: allow
    actions: [data_access]
    operations: [read]
    when: subject.roles contains "reader"
"""
ASK: dict[str, Any] = {
    "action": "data_access",
    "operation": "read",
    "subject": {"kind": "user", "id": "rita", "roles": ["reader"]},
    "resource": {"type": "report", "id": "r1"},
}


def policy_client(stack: ApiStack) -> PolicyClient:
    return PolicyClient(stack.settings.policy.addr, cache_size=0)


async def test_policy_crud_and_decisions(api_stack: ApiStack) -> None:
    http = api_stack.client(await api_stack.key("policies:*", name="paula", roles=("admin",)))
    created = await http.post("/v1/policies", json={"text": SAMPLE % "readers"})
    assert created.status_code == 201, created.text
    assert created.json()["policy"]["id"] == "readers"
    assert created.json()["policy"]["created_by"] == "api:paula"
    assert "readers" in [p["id"] for p in (await http.get("/v1/policies")).json()["policies"]]
    shown = (await http.get("/v1/policies/readers")).json()
    assert shown["version"] == "1"
    assert "readers-read" in shown["source"]["text"]

    decided = await http.post("/v1/policies/evaluate", json=ASK)
    assert decided.status_code == 200, decided.text
    assert decided.json()["matched_rule"] == "readers-read"
    assert "allow" in decided.json()
    explained = (await http.post("/v1/policies/explain", json=ASK)).json()
    assert any(step["matched"] for step in explained["trace"])
    dry = await http.post("/v1/policies/dry-run", json={"requests": [ASK], "remove": ["readers"]})
    assert dry.status_code == 200, dry.text
    assert dry.json()["changed_count"] == 1

    replaced = await http.put(
        "/v1/policies/readers", json={"text": (SAMPLE % "readers").replace('reader"', 'auditor"')}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["policy"]["version"] == "2"
    assert (await http.get("/v1/policies/readers", params={"version": 1})).json()["version"] == "1"
    mismatch = await http.put("/v1/policies/readers", json={"text": SAMPLE % "others"})
    assert mismatch.status_code == 422
    assert (await http.put("/v1/policies/nothing-here", json={"text": SAMPLE % "nothing-here"})).status_code == 404

    deleted = await http.delete("/v1/policies/readers", params={"reason": "tidy"})
    assert deleted.status_code == 200, deleted.text
    assert (await http.get("/v1/policies/readers")).status_code == 404
    assert (await http.delete("/v1/policies/readers")).status_code == 404


async def test_invalid_and_refused_policy_changes(api_stack: ApiStack) -> None:
    http = api_stack.client(await api_stack.key("policies:admin", name="pete", roles=("admin",)))
    broken = await http.post("/v1/policies", json={"text": "id: broken\nrules:\n  - name: x\n    effect: maybe\n"})
    assert broken.status_code == 422
    error = error_of(broken)
    assert error["code"] == "invalid_argument"
    assert error["details"]["issues"][0]["location"]["line"] >= 1
    checked = await http.post("/v1/policies", json={"text": SAMPLE % "only-checked", "validate_only": True})
    assert checked.status_code == 200
    assert checked.json()["valid"] is True

    protected = await http.post("/v1/policies", json={"text": SAMPLE % "protected-base"})
    assert protected.status_code == 201
    refused = await http.delete("/v1/policies/protected-base")
    assert refused.status_code == 403
    assert "protected policies are never deleted" in error_of(refused)["message"]
    reader = api_stack.client(await api_stack.key("policies:read", name="ron", roles=("admin",)))
    scoped = await reader.post("/v1/policies", json={"text": SAMPLE % "sneaky"})
    assert scoped.status_code == 403
    assert error_of(scoped)["details"]["required_scope"] == "policies:admin"

    client = policy_client(api_stack)
    try:
        ids = {p.id for p in await client.list()}
    finally:
        await client.close()
    assert "protected-base" in ids  # the refused delete changed nothing
    assert "only-checked" not in ids
    assert "sneaky" not in ids
    assert "broken" not in ids
    event = await api_stack.audited(refused.headers["x-request-id"])
    assert details(event)["admission"]["matched_rule"] == "protected-policies-stay"
    assert details(event)["code"] == "permission_denied"
