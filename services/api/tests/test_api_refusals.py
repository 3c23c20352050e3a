"""Bad input and refused callers: 401, 403, 404, 405, 413, 422, 429, 503, each with the one error body,
nothing changed, and the refusal audited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from symbi_api.keys import KeyStore, key_id_of
from symbi_api.service import SPEC as API
from symbi_common.service import ServiceRunner
from symbi_proto.v1 import audit_pb2

from .conftest import ApiStack, agent_dsl, details, error_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_unauthenticated_and_revoked_keys(api_stack: ApiStack) -> None:
    anonymous = api_stack.client()
    before = (await api_stack.lifecycle.counts()).total
    none = await anonymous.post("/v1/agents", json={"source": {"format": "dsl", "text": agent_dsl("eta")}})
    assert none.status_code == 401
    assert error_of(none)["code"] == "unauthenticated"
    assert none.headers["www-authenticate"].startswith("Bearer")
    garbage = await api_stack.client("symbi_" + "x" * 43).get("/v1/agents")
    assert garbage.status_code == 401
    short = await api_stack.client("short").get("/v1/agents")
    assert short.status_code == 401
    assert error_of(garbage)["message"] == error_of(short)["message"] == "invalid API key"  # one answer for all

    token = await api_stack.key("agents:read", name="temp")
    by_header = await api_stack.client().get("/v1/agents", headers={"X-API-Key": token})
    assert by_header.status_code == 200
    await KeyStore(api_stack.redis).revoke(key_id_of(token), by="pytest")
    revoked = await api_stack.client(token).get("/v1/agents")
    assert revoked.status_code == 401
    assert (await api_stack.lifecycle.counts()).total == before
    event = await api_stack.audited(none.headers["x-request-id"])
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert details(event)["code"] == "unauthenticated"
    assert "key_id" not in event.details
    event = await api_stack.audited(revoked.headers["x-request-id"])  # a read, audited because refused
    assert details(event)["status"] == 401


async def test_malformed_unknown_and_rate_limited(api_stack: ApiStack) -> None:
    http = api_stack.admin
    before = (await api_stack.lifecycle.counts()).total
    malformed = await http.post("/v1/agents", content=b'{"source": ', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422
    assert error_of(malformed)["details"]["problems"][0]["type"] == "json_invalid"
    unknown_field = await http.post("/v1/agents", json={"manifest": {}, "surprise": 1})
    assert unknown_field.status_code == 422
    assert "surprise" in error_of(unknown_field)["message"]
    assert (await api_stack.lifecycle.counts()).total == before

    nowhere = await http.get("/v1/nowhere")
    assert nowhere.status_code == 404
    assert error_of(nowhere)["code"] == "not_found"
    wrong_method = await http.delete("/v1/agents")
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["code"] == "method_not_allowed"
    traced = await http.get("/v1/agents", headers={"X-Request-ID": "my-request-1"})
    assert traced.headers["x-request-id"] == "my-request-1"

    limited = api_stack.client(await api_stack.key("agents:read", rate_limit_per_minute=3))
    codes = [(await limited.get("/v1/agents")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    over = await limited.get("/v1/agents")
    assert over.status_code == 429
    assert error_of(over)["code"] == "resource_exhausted"
    assert int(over.headers["retry-after"]) >= 1
    assert (await http.get("/v1/agents")).status_code == 200  # other keys are not affected
    event = await api_stack.audited(over.headers["x-request-id"])
    assert details(event)["status"] == 429


@pytest_asyncio.fixture(loop_scope="module")
async def strict_api(api_stack: ApiStack) -> AsyncIterator[str]:
    """A second API replica with a 1 KiB body limit whose policy service cannot be reached."""
    settings = api_stack.settings.with_overrides({"api.max_body_bytes": 1024, "policy.addr": "127.0.0.1:9",
                                                  "policy.decision_timeout_s": 0.5})  # fmt: skip
    runner = ServiceRunner(API, settings, grace_s=3.0)
    await runner.start()
    try:
        assert runner.ctx is not None
        yield runner.ctx.health.endpoints["http"]
    finally:
        await runner.shutdown()


async def test_oversized_bodies_and_undecidable_policy(api_stack: ApiStack, strict_api: str) -> None:
    http = api_stack.client(api_stack.admin_key, base_url=strict_api)
    before = (await api_stack.lifecycle.counts()).total
    big = {"source": {"format": "dsl", "text": agent_dsl("theta") + "#" * 2000}}
    declared = await http.post("/v1/agents", json=big)
    assert declared.status_code == 413
    assert error_of(declared)["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 512

    streamed = await http.post("/v1/agents", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert error_of(streamed)["code"] == "payload_too_large"

    small = {"source": {"format": "dsl", "text": agent_dsl("iota")}}
    undecided = await http.post("/v1/agents", json=small)
    assert undecided.status_code == 503  # fail closed: policy could not decide
    error = error_of(undecided)
    assert error["code"] == "unavailable"
    assert error["details"]["deny_kind"] == "DENY_KIND_UNAVAILABLE"
    assert "nothing was changed" in error["message"]
    assert (await http.get("/v1/agents")).status_code == 200  # reads need no decision
    assert (await api_stack.lifecycle.counts()).total == before
    event = await api_stack.audited(undecided.headers["x-request-id"])
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_FAILURE
    assert details(event)["admission"]["allowed"] is False
    event = await api_stack.audited(declared.headers["x-request-id"])
    assert details(event)["code"] == "payload_too_large"
