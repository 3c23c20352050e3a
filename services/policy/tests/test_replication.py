"""Several replicas on one real NATS agree on the policy set, whatever they miss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

from symbi_common import subjects
from symbi_common.errors import ConflictError
from symbi_common.health import DEGRADED
from symbi_common.policy_client import PolicyClient, Principal, Target, request
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_policy.compiler import compile_sources
from symbi_policy.replication import EXPECTED_LAST_SEQ_HEADER
from symbi_policy.service import SPEC
from symbi_proto.v1 import policy_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_policy_log")]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "policies"
AGENT = Principal("agent", "a1", tenant="t1", capabilities=["web_search"])
PROBES = [
    request("tool_invoke", AGENT, Target("tool", t, labels=labels), operation="call")
    for t in ("search/web", "shell/bash", "web/fetch", "mail/send")
    for labels in ((), ("phi",))
]


def simple(policy_id: str, tool: str = "x/*") -> str:
    return (
        f"id: {policy_id}\nrules:\n  - {{name: r, effect: allow, actions: [tool_invoke], resources: ['tool:{tool}']}}\n"
    )


async def set_version(client: PolicyClient) -> int:
    reply = await client.stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=5)
    return int(reply.policy_set_version)


async def fingerprint(client: PolicyClient) -> list[tuple[str, int, bytes]]:
    return sorted((p.id, p.version, p.source_sha256) for p in await client.list())


async def outcomes(client: PolicyClient) -> list[tuple[str | None, str, int]]:
    return [(d.WhichOneof("outcome"), d.matched_rule, d.policy_version) for d in await client.evaluate_batch(PROBES)]


@pytest_asyncio.fixture
async def replicas(
    run_service: RunService, settings: Settings, nc: Client
) -> AsyncIterator[tuple[PolicyClient, PolicyClient]]:
    slow = settings.with_overrides({"policy.resync_interval_s": 3600.0})  # broadcasts only, unless a gap shows
    first, second = await run_service(SPEC, slow), await run_service(SPEC, slow)
    clients = [PolicyClient(r.ctx.health.endpoints["grpc"], cache_size=0) for r in (first, second) if r.ctx]
    try:
        yield clients[0], clients[1]
    finally:
        for client in clients:
            await client.close()


async def test_two_replicas_agree_after_every_update(replicas: tuple[PolicyClient, PolicyClient]) -> None:
    a, b = replicas
    for path in sorted(EXAMPLES.glob("*.yaml")):
        await a.register(path.read_text(), name=path.name)
    await eventually(lambda: _same(a, b), what="replica b applied a's updates")
    assert await set_version(b) == 3
    assert await outcomes(a) == await outcomes(b)
    tighter = (EXAMPLES / "tools.yaml").read_text().replace("resources: [\"tool:search/*\", \"tool:docs/*\"]",
                                                             "resources: [\"tool:docs/*\"]")  # fmt: skip
    await b.register(tighter)
    await b.delete("platform-baseline")
    await eventually(lambda: _same(a, b), what="replica a applied b's updates")
    assert await set_version(a) == 5
    assert await outcomes(a) == await outcomes(b)
    decision = await a.evaluate(PROBES[0])
    assert (decision.deny.kind, decision.policy_set_version) == (policy_pb2.DENY_KIND_DEFAULT, 5)


async def _same(a: PolicyClient, b: PolicyClient) -> bool:
    return await set_version(a) == await set_version(b) and await fingerprint(a) == await fingerprint(b)


async def test_concurrent_writers_never_fork_the_set(replicas: tuple[PolicyClient, PolicyClient], nc: Client) -> None:
    a, b = replicas
    writes = [client.register(simple(f"p{i}-{side}")) for i in range(10) for side, client in (("a", a), ("b", b))]
    replies = await asyncio.gather(*writes)
    assert sorted(r.policy_set_version for r in replies) == list(range(1, 21))  # each version made exactly once
    await eventually(lambda: _same(a, b), what="both replicas hold all 20 policies")
    assert len(await a.list()) == 20
    info = await nc.jetstream().stream_info(subjects.POLICY_STREAM)
    assert info.state.messages == 20
    assert info.state.last_seq == 20


async def test_optimistic_concurrency_on_one_policy(replicas: tuple[PolicyClient, PolicyClient]) -> None:
    a, b = replicas
    await a.register(simple("shared"))
    await eventually(lambda: _same(a, b))
    results = await asyncio.gather(
        a.register(simple("shared", "a/*"), expected_version=1),
        b.register(simple("shared", "b/*"), expected_version=1),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "RegisterPolicyResponse"]
    winner = next(r for r in results if not isinstance(r, BaseException))
    assert winner.policy.version == 2
    with pytest.raises(ConflictError):
        await a.delete("shared", expected_version=1)


async def _append_behind_their_backs(nc: Client, text: str) -> int:
    """What a writer that died between its append and its broadcast leaves behind."""
    js = nc.jetstream(timeout=5)
    info = await js.stream_info(subjects.POLICY_STREAM)
    last = int(info.state.last_seq)
    (compiled,) = compile_sources(text, "direct.yaml")
    compiled.policy.version = 1
    update = policy_pb2.PolicyUpdated(
        change=policy_pb2.POLICY_CHANGE_REGISTERED,
        policy_id=compiled.id,
        policy=compiled.policy,
        policy_set_version=last + 1,
        previous_policy_set_version=last,
        origin="a-writer-that-died",
    )
    ack = await js.publish(
        subjects.POLICY_LOG, update.SerializeToString(), headers={EXPECTED_LAST_SEQ_HEADER: str(last)}
    )
    return int(ack.seq)


async def test_a_replica_that_missed_an_update_sees_the_gap_and_catches_up(
    replicas: tuple[PolicyClient, PolicyClient], nc: Client
) -> None:
    a, b = replicas
    await a.register(simple("one"))
    await eventually(lambda: _same(a, b))
    assert await _append_behind_their_backs(nc, simple("ghost")) == 2
    assert await set_version(b) == 1  # nobody told b (its periodic check is an hour away)
    await a.register(simple("three"))  # a catches up before writing; its broadcast says "after 2"
    await eventually(lambda: _same(a, b), what="b closed the gap")
    assert {p.id for p in await b.list()} == {"one", "ghost", "three"}
    assert await set_version(b) == 3


async def test_the_periodic_check_finds_a_last_update_nobody_announced(
    run_service: RunService, settings: Settings, nc: Client
) -> None:
    runner = await run_service(SPEC, settings.with_overrides({"policy.resync_interval_s": 0.1}))
    assert runner.ctx is not None
    client = PolicyClient(runner.ctx.health.endpoints["grpc"])
    try:
        await client.register(simple("first"))
        version = await _append_behind_their_backs(nc, simple("unannounced"))
        await eventually(lambda: _at(client, version), what="periodic resync")
        assert {p.id for p in await client.list()} == {"first", "unannounced"}
    finally:
        await client.close()


async def _at(client: PolicyClient, version: int) -> bool:
    return await set_version(client) == version


async def test_a_stored_policy_this_replica_cannot_compile_denies_everything(
    run_service: RunService, settings: Settings, nc: Client
) -> None:
    runner: ServiceRunner = await run_service(SPEC, settings.with_overrides({"policy.resync_interval_s": 0.1}))
    assert runner.ctx is not None
    client = PolicyClient(runner.ctx.health.endpoints["grpc"])
    try:
        await client.register(simple("open", "*"))
        js = nc.jetstream(timeout=5)
        bad = policy_pb2.Policy(
            id="garbled", version=1, source=policy_pb2.PolicySource(text="id: garbled\nrules: nope\n", name="g.yaml")
        )
        update = policy_pb2.PolicyUpdated(change=policy_pb2.POLICY_CHANGE_REGISTERED, policy_id="garbled", policy=bad)
        await js.publish(subjects.POLICY_LOG, update.SerializeToString(), headers={EXPECTED_LAST_SEQ_HEADER: "1"})
        await eventually(lambda: _at(client, 2))
        decision = await client.evaluate(PROBES[0])
        assert decision.deny.kind == policy_pb2.DENY_KIND_RULE
        assert "policy garbled v1 cannot be compiled here" in decision.deny.reason
        snapshot = await runner.health.snapshot()
        component = {c.name: c for c in snapshot.components}["policies"]
        assert component.status == DEGRADED
        assert "garbled" in component.detail
        assert any("cannot be compiled" in e.message for e in snapshot.recent_errors)
    finally:
        await client.close()
