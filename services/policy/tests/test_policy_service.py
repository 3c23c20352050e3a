"""The policy service over gRPC on a real NATS: decisions, management, audit, health."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from symbi_testing.checks import health_of
from symbi_testing.fixtures import RunService
from symbi_testing.streams import details, wait_for_audit

from symbi_common import embedded, telemetry
from symbi_common.errors import ConfigError, ConflictError, InvalidArgumentError, NotFoundError
from symbi_common.policy_client import PolicyClient, Principal, Target, is_allowed, request
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_policy.service import POLICY_SERVICE_NAME, SPEC
from symbi_proto.v1 import audit_pb2, policy_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_policy_log")]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "policies"
AGENT = Principal("agent", "a1", tenant="t1", capabilities=["web_search"])


async def client_for(runner: ServiceRunner, **kwargs: object) -> PolicyClient:
    assert runner.ctx is not None
    return PolicyClient(runner.ctx.health.endpoints["grpc"], **kwargs)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def policy(run_service: RunService) -> AsyncIterator[PolicyClient]:
    runner = await run_service(SPEC)
    client = await client_for(runner, actor="tester")
    for path in sorted(EXAMPLES.glob("*.yaml")):
        await client.register(path.read_text(), name=path.name)
    try:
        yield client
    finally:
        await client.close()


def tool(tool_id: str, who: Principal = AGENT, **kw: object) -> policy_pb2.EvaluateRequest:
    return request("tool_invoke", who, Target("tool", tool_id, **kw), operation="call")  # type: ignore[arg-type]


CASES = [
    # (what, request, outcome, policy/rule or deny kind)
    ("access allow", tool("search/web"), "allow_with_conditions", "tools-default/search-tools"),
    ("access deny", tool("shell/bash"), "deny", "tools-default/no-shell-for-untrusted"),
    ("default deny", tool("mail/send"), "deny", "DENY_KIND_DEFAULT"),
    ("data flow deny", tool("web/fetch", labels=["phi"]), "deny", "regulated-data/phi-never-external"),
    ("resource usage deny", request("resource_allocate", AGENT, Target("task", "t"),
                                    action_attributes={"memory_mb": 4096}), "deny", "platform-baseline/task-limits"),
    ("resource usage limits", request("resource_allocate", AGENT, Target("task", "t"),
                                      action_attributes={"memory_mb": 512}),
     "allow_with_conditions", "platform-baseline/task-limits"),
    ("agent creation", request("agent_create", Principal("user", "ops", roles=["operator"]), Target("agent", "x")),
     "allow", "platform-baseline/operators-create-agents"),
    ("agent creation denied", request("agent_create", AGENT, Target("agent", "x")), "deny", "DENY_KIND_DEFAULT"),
    ("message send", request("message_send", AGENT, Target("agent", "a2", tenant="t1"), operation="send"),
     "allow_with_conditions", "platform-baseline/same-tenant-messages"),
    ("message cross tenant", request("message_send", AGENT, Target("agent", "a2", tenant="t2", labels=["pii"]),
                                     operation="send"), "deny", "regulated-data/no-cross-tenant"),
    ("data access own memory", request("data_access", AGENT, Target("memory", "m1", owner="a1"), operation="read"),
     "allow", "platform-baseline/read-own-memory"),
    ("data access error", request("data_access", AGENT, Target("memory", "m1"), operation="read"),
     "deny", "DENY_KIND_ERROR"),
    ("invalid request", request("message_send", AGENT, Target("agent"), operation="send"),
     "deny", "DENY_KIND_INVALID_REQUEST"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "req", "outcome", "decider"), CASES, ids=[c[0] for c in CASES])
async def test_decisions_over_grpc(
    policy: PolicyClient, what: str, req: policy_pb2.EvaluateRequest, outcome: str, decider: str
) -> None:
    decision = await policy.evaluate(req)
    assert decision.WhichOneof("outcome") == outcome, decision
    if decider.startswith("DENY_KIND"):
        assert policy_pb2.DenyKind.Name(decision.deny.kind) == decider
    else:
        assert f"{decision.policy_id}/{decision.matched_rule}" == decider
        assert decision.policy_version == 1
    assert decision.policy_set_version == 3
    assert decision.decision_id


async def test_batch_decisions_keep_order_and_refuse_oversized_batches(policy: PolicyClient) -> None:
    decisions = await policy.evaluate_batch([req for _, req, _, _ in CASES])
    assert [d.WhichOneof("outcome") for d in decisions] == [outcome for _, _, outcome, _ in CASES]
    too_many = await policy.evaluate_batch([tool("search/web")] * 10_001)
    assert len(too_many) == 10_001
    assert all(d.deny.kind == policy_pb2.DENY_KIND_INVALID_REQUEST for d in too_many)
    assert "exceeds the limit of 10000" in too_many[0].deny.reason


async def test_every_decision_is_audited(policy: PolicyClient, nc: Client) -> None:
    allowed = await policy.evaluate(tool("search/web"))
    req = tool("shell/bash")
    req.context.correlation_id = "corr-1"
    denied = await policy.evaluate(req)
    ids = {allowed.decision_id, denied.decision_id}
    events = await wait_for_audit(nc, "policy.decision", lambda e: e.details["decision_id"] in ids, count=2)
    by_id = {e.details["decision_id"]: e for e in events}
    allow_event, deny_event = by_id[allowed.decision_id], by_id[denied.decision_id]
    assert allow_event.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
    assert allow_event.agent_id == "a1"
    assert allow_event.details["matched_rule"] == "search-tools"
    assert allow_event.correlation_id == allowed.decision_id  # none given: the decision id links the outcome
    assert allow_event.timestamp == allowed.time
    assert [c["rule"] for c in details(allow_event)["conditions"]] == [
        "tools-default/record-tool-calls",
        "tools-default/tool-call-rate",
    ]
    assert deny_event.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert deny_event.correlation_id == "corr-1"
    assert deny_event.details["reason"] == "shell tools need the trusted_code capability"
    assert deny_event.details["deny_kind"] == "DENY_KIND_RULE"


async def test_policy_changes_are_versioned_and_audited(policy: PolicyClient, nc: Client) -> None:
    text = (EXAMPLES / "tools.yaml").read_text()
    unchanged = await policy.register(text)
    assert (unchanged.policy.version, unchanged.policy_set_version) == (1, 3)
    changed = await policy.register(text.replace("limit: 60", "limit: 30"))
    assert (changed.policy.version, changed.policy_set_version) == (2, 4)
    assert changed.policy.created_by == "tester"
    assert (await policy.get("tools-default")).version == 2
    assert "limit: 60" in (await policy.get("tools-default", version=1)).source.text
    with pytest.raises(ConflictError, match="at version 2, not 1"):
        await policy.register(text, expected_version=1)
    decision = await policy.evaluate(tool("search/web"))
    assert (decision.policy_version, decision.policy_set_version) == (2, 4)
    assert await policy.delete("tools-default", reason="retired") == 5
    with pytest.raises(NotFoundError):
        await policy.get("tools-default")
    assert (await policy.evaluate(tool("search/web"))).deny.kind == policy_pb2.DENY_KIND_DEFAULT
    again = await policy.register(text)
    assert again.policy.version == 3  # versions of an id keep rising across a delete
    changes = ("policy.registered", "policy.deleted")
    events = await wait_for_audit(
        nc, "policy.*", lambda e: e.event_type in changes and e.details["policy_id"] == "tools-default", count=5
    )
    assert [e.event_type for e in events][-3:] == ["policy.registered", "policy.deleted", "policy.registered"]
    assert events[-2].details["reason"] == "retired"
    assert events[-2].details["actor"] == "tester"


async def test_invalid_policies_are_refused_with_their_location(policy: PolicyClient) -> None:
    bad = (EXAMPLES / "tools.yaml").read_text().replace('contains "web_search"', "contains")
    with pytest.raises(InvalidArgumentError, match=r"tools\.yaml:11:60: rule search-tools: condition ends") as info:
        await policy.register(bad, name="tools.yaml")
    assert info.value.metadata["file"] == "tools.yaml"
    assert (info.value.metadata["line"], info.value.metadata["column"]) == ("11", "60")
    assert (await policy.get("tools-default")).version == 1  # the previous version stays in force
    assert is_allowed(await policy.evaluate(tool("search/web")))
    checked = await policy.register(bad, name="tools.yaml", validate_only=True)
    assert checked.issues[0].location.line == 11
    assert checked.policy_set_version == 3
    one = "rules:\n  - {name: r, effect: allow, actions: [admin]}\n"
    with pytest.raises(InvalidArgumentError, match="one policy per call"):
        await policy.register(f"id: a\n{one}---\nid: b\n{one}")


async def test_list_pages_and_filters(policy: PolicyClient) -> None:
    every = await policy.list(page_size=1)
    assert [p.id for p in every] == ["platform-baseline", "regulated-data", "tools-default"]
    audits = await policy.list(policy_type=policy_pb2.POLICY_TYPE_DATA_FLOW)
    assert [p.id for p in audits] == ["regulated-data"]


async def test_explain_returns_the_trace(policy: PolicyClient) -> None:
    reply = await policy.explain(tool("web/fetch", labels=["phi"]))
    assert reply.decision.matched_rule == "phi-never-external"
    first = reply.trace[0]
    assert (first.policy_id, first.rule, first.matched) == ("regulated-data", "phi-never-external", True)
    assert "labels any of ['phi', 'pii'] -> true" in first.detail


async def test_dry_run_reports_what_would_change_and_enforces_nothing(policy: PolicyClient) -> None:
    stricter = (
        (EXAMPLES / "tools.yaml")
        .read_text()
        .replace(
            'when: subject.kind == "agent" and subject.capabilities contains "web_search"',
            'when: subject.capabilities contains "research"',
        )
    )
    recorded = [tool("search/web"), tool("shell/bash"), tool("mail/send")]
    source = policy_pb2.PolicySource(text=stricter, name="candidate.yaml")
    reply = await policy.dry_run(recorded, [source])
    assert reply.changed_count == 1
    assert [r.changed for r in reply.results] == [True, False, False]
    assert reply.results[0].current.WhichOneof("outcome") == "allow_with_conditions"
    assert reply.results[0].candidate.deny.kind == policy_pb2.DENY_KIND_DEFAULT
    assert is_allowed(await policy.evaluate(tool("search/web")))  # nothing enforced
    removed = await policy.dry_run(recorded, remove=["tools-default"])
    assert [r.changed for r in removed.results] == [True, False, False]  # the shell deny stays a deny
    broken = await policy.dry_run(recorded, [policy_pb2.PolicySource(text="id: x\n", name="c.yaml")])
    assert broken.issues
    assert not broken.results


async def test_grpc_health_and_trace_propagation(
    run_service: RunService, nc: Client, span_exporter: InMemorySpanExporter
) -> None:
    await run_service(SPEC)
    addr = (await health_of(nc, "policy")).endpoints["grpc"]
    async with grpc.aio.insecure_channel(addr, interceptors=[telemetry.TracingClientInterceptor()]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with telemetry.tracer().start_as_current_span("caller") as caller:
            for name in ("", POLICY_SERVICE_NAME):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=3)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        trace_id = caller.get_span_context().trace_id
    server_spans = [
        s for s in span_exporter.get_finished_spans()
        if s.name == "/grpc.health.v1.Health/Check" and s.context.trace_id == trace_id
    ]  # fmt: skip
    assert len(server_spans) == 2
    assert all(s.parent is not None and s.parent.span_id == caller.get_span_context().span_id for s in server_spans)
    status = await health_of(nc, "policy")
    components = {c.name: c for c in status.components}
    assert components["policies"].detail == "policy set v0, 0 policies"
    assert "pending" in components["decision-audit"].detail


async def test_a_decision_carries_the_callers_trace_into_its_audit_event(
    policy: PolicyClient, nc: Client, span_exporter: InMemorySpanExporter
) -> None:
    with telemetry.tracer().start_as_current_span("enforcement point") as span:
        decision = await policy.evaluate(tool("search/web"))
    trace_id = f"{span.get_span_context().trace_id:032x}"
    (event,) = await wait_for_audit(nc, "policy.decision", lambda e: e.details["decision_id"] == decision.decision_id)
    assert event.trace_id == trace_id


async def test_unreachable_or_slow_policy_service_means_deny() -> None:
    port = embedded.free_port()
    client = PolicyClient(f"127.0.0.1:{port}", timeout_s=0.5)
    try:
        decision = await client.evaluate(tool("search/web"))
        assert decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE
        assert f"127.0.0.1:{port}" in decision.deny.reason
        batch = await client.evaluate_batch([tool("a/b"), tool("c/d")])
        assert [d.deny.kind for d in batch] == [policy_pb2.DENY_KIND_UNAVAILABLE] * 2
    finally:
        await client.close()
    with socket.socket() as sock:  # accepts connections, never answers: the deadline denies
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        slow = PolicyClient(f"127.0.0.1:{sock.getsockname()[1]}", timeout_s=0.3)
        try:
            decision = await slow.evaluate(tool("search/web"))
        finally:
            await slow.close()
    assert decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE


async def test_grpc_port_in_use_is_reported(settings: Settings) -> None:
    port = embedded.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        runner = ServiceRunner(SPEC, settings.with_overrides({"policy.port": port}), grace_s=1)
        with pytest.raises(ConfigError, match=f"policy gRPC cannot listen on 127.0.0.1:{port}"):
            await runner.run_until_stopped()


async def test_policies_outlive_the_service(run_service: RunService, settings: Settings) -> None:
    first = await run_service(SPEC)
    client = await client_for(first)
    await client.register((EXAMPLES / "tools.yaml").read_text())
    await client.close()
    await first.shutdown()
    second = await run_service(SPEC, settings)
    client = await client_for(second)
    try:
        assert (await client.get("tools-default")).version == 1
        assert is_allowed(await client.evaluate(tool("search/web")))
    finally:
        await client.close()


async def test_decisions_deny_when_the_audit_trail_cannot_take_them(
    run_service: RunService, settings: Settings
) -> None:
    runner = await run_service(SPEC, settings.with_overrides({"policy.audit_buffer": 1}))
    client = await client_for(runner)
    try:
        await client.register("id: open\nrules:\n  - {name: all, effect: allow, actions: ['*']}\n")
        decisions = await client.evaluate_batch([tool("x/y")] * 50)  # 50 events into a queue of 1
    finally:
        await client.close()
    reasons = {d.deny.reason for d in decisions if d.HasField("deny")}
    assert reasons == {"audit trail unavailable: the decision cannot be recorded, so it is denied"}
    assert is_allowed(decisions[0])  # the first fits; the rest fail closed
    assert sum(is_allowed(d) for d in decisions) < 50


async def test_cached_decisions_are_reused_only_within_a_version(run_service: RunService) -> None:
    policy = await client_for(await run_service(SPEC))
    rule = "{name: mail, effect: allow, actions: [tool_invoke], resources: ['tool:mail/*']}"
    text = f"id: cached\ncache_ttl: 60s\nrules:\n  - {rule}\n"
    try:
        await policy.register(text)
        first = await policy.evaluate(tool("mail/send"))
        second = await policy.evaluate(tool("mail/send"))
        assert first.cache_ttl.seconds == 60
        assert second.decision_id == first.decision_id  # served from the cache
        assert policy.cache.hits == 1
        await policy.register(text.replace("tool:mail/*", "tool:mail/read"))  # new version: send no longer allowed
        third = await policy.evaluate(tool("mail/send"))
        assert third.decision_id != first.decision_id
        assert third.deny.kind == policy_pb2.DENY_KIND_DEFAULT
        # Another policy without caching on the same enforcement point turns caching off there.
        await policy.register(
            "id: other\nrules:\n  - {name: r, effect: deny, actions: [tool_invoke], resources: ['tool:x/*']}\n"
        )
        assert (await policy.evaluate(tool("mail/read"))).cache_ttl.seconds == 0
    finally:
        await policy.close()


async def test_enforcement_points_raise_on_deny_unless_enforcement_is_off(run_service: RunService) -> None:
    from symbi_common.errors import PermissionDeniedError

    runner = await run_service(SPEC)
    strict, lenient = await client_for(runner), await client_for(runner, enforce=False)
    try:
        with pytest.raises(PermissionDeniedError, match="no policy allows") as info:
            await strict.check(tool("x/y"))
        assert info.value.metadata["deny_kind"] == "DENY_KIND_DEFAULT"
        assert (await lenient.check(tool("x/y"))).HasField("deny")
    finally:
        await strict.close()
        await lenient.close()


async def test_a_concurrent_burst_of_decisions(policy: PolicyClient) -> None:
    decisions = await asyncio.gather(*(policy.evaluate(tool(f"search/{i}")) for i in range(200)))
    assert all(is_allowed(d) for d in decisions)
    assert len({d.decision_id for d in decisions}) == 200
