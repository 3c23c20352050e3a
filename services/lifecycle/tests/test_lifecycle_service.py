"""The lifecycle service on real NATS, Redis and a real policy service."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from symbi_testing.checks import check_redis_backed_service, eventually
from symbi_testing.fixtures import RunService
from symbi_testing.streams import audit_events, details, wait_for_audit

from symbi_common.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.settings import Settings
from symbi_lifecycle import events, store
from symbi_lifecycle.service import SPEC
from symbi_proto.v1 import agent_pb2, audit_pb2

from .conftest import EXAMPLES, SchedulerDouble, simple, source, usage

pytestmark = pytest.mark.integration
S = agent_pb2


async def test_starts_and_needs_redis(run_service: RunService, nc: Client, settings: Settings) -> None:
    await check_redis_backed_service(SPEC, await run_service(SPEC), nc, settings)


async def keys(redis_url: str, pattern: str = "symbi:lc:*") -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys(pattern))
    finally:
        await client.aclose()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
async def test_every_example_agent_is_created_ready(
    lifecycle: LifecycleClient, nc: Client, policy_settings: Settings, path: Path
) -> None:
    seen: list[agent_pb2.StateTransition] = []

    async def on_state(msg: object) -> None:
        transition = agent_pb2.StateTransition()
        transition.ParseFromString(msg.data)  # type: ignore[attr-defined]
        seen.append(transition)

    sub = await nc.subscribe("symbi.agent.*.state", cb=on_state)
    reply = await lifecycle.create_from(source(path))
    assert not reply.issues
    agent = reply.agent
    assert agent.state == S.AGENT_STATE_READY
    assert agent.revision == 2
    assert agent.definition.metadata.name == path.stem
    assert len(agent.identity.signing_public_key) == 32
    assert len(agent.identity.agreement_public_key) == 32
    assert await lifecycle.get(agent.agent_id) == agent

    history = await lifecycle.history(agent.agent_id)
    assert [(t.from_state, t.to_state) for t in history] == [
        (S.AGENT_STATE_UNSPECIFIED, S.AGENT_STATE_INITIALIZING),
        (S.AGENT_STATE_INITIALIZING, S.AGENT_STATE_READY),
    ]
    await eventually(lambda: len(seen) == 2, what="two state events")
    assert [t.event_id for t in seen] == [t.event_id for t in history]
    await sub.unsubscribe()

    audited = await wait_for_audit(nc, "agent.>", lambda _: True, count=2)
    assert [e.event_id for e in audited] == [t.event_id for t in history]
    assert [e.event_type for e in audited] == [events.CREATED, events.STATE_CHANGED]
    assert all(e.agent_id == agent.agent_id for e in audited)
    created = details(audited[0])
    assert created["name"] == path.stem
    assert created["key_id"] == agent.identity.key_id
    assert len(created["definition_sha256"]) == 64

    policy_ids = {p.registered_policy_id for p in agent.definition.policies}
    if agent.definition.policies:
        assert policy_ids == {f"agent-{agent.agent_id}"}
        client = PolicyClient(policy_settings.policy.addr)
        try:
            registered = await client.get(f"agent-{agent.agent_id}")
        finally:
            await client.close()
        assert agent.agent_id in registered.source.text
    else:
        assert policy_ids == set()


async def test_private_keys_never_leave_redis(lifecycle: LifecycleClient, redis_url: str) -> None:
    agent = (await lifecycle.create_from(simple())).agent
    client = aioredis.Redis.from_url(redis_url)
    try:
        signing, agreement = await client.hmget(store.keys_key(agent.agent_id), ["signing", "agreement"])
    finally:
        await client.aclose()
    assert isinstance(signing, bytes)
    assert isinstance(agreement, bytes)
    assert len(signing) == len(agreement) == 32
    identity = await lifecycle.identity(agent.agent_id)
    for blob in (agent.SerializeToString(), identity.SerializeToString()):
        assert signing not in blob
        assert agreement not in blob


async def test_a_bad_definition_creates_nothing(lifecycle: LifecycleClient, redis_url: str, nc: Client) -> None:
    reply = await lifecycle.create_from(
        agent_pb2.DefinitionSource(
            format=S.DEFINITION_FORMAT_DSL, text='agent a() {\n  capabilities = ["fly"]\n}', name="bad.symbi"
        )
    )
    assert not reply.HasField("agent")
    (problem,) = reply.issues
    assert (problem.code, problem.location.file, problem.location.line, problem.location.column) == (
        "unknown_capability",
        "bad.symbi",
        2,
        19,
    )
    syntax = await lifecycle.create_from(agent_pb2.DefinitionSource(format=S.DEFINITION_FORMAT_DSL, text="agent {"))
    assert syntax.issues[0].code == "syntax_error"
    assert await keys(redis_url) == []
    assert await audit_events(nc, "agent.>") == []


async def test_validate_only_checks_and_stores_nothing(lifecycle: LifecycleClient, redis_url: str) -> None:
    reply = await lifecycle.create_from(simple(), validate_only=True)
    assert not reply.issues
    assert not reply.HasField("agent")
    assert await keys(redis_url) == []


async def test_creation_is_decided_by_policy(lifecycle: LifecycleClient, nc: Client, redis_url: str) -> None:
    with pytest.raises(PermissionDeniedError, match="no policy allows agent_create"):
        await lifecycle.create_from(simple("forbidden_agent"))
    stranger = LifecycleClient(nc, actor="stranger")
    with pytest.raises(PermissionDeniedError):
        await stranger.create_from(simple())
    assert await keys(redis_url) == []
    decisions = await wait_for_audit(nc, "policy.decision", lambda _: True, count=2)
    assert {details(d)["outcome"] for d in decisions} == {"deny"}


async def test_an_unreachable_policy_service_denies_creation(
    run_service: RunService, policy_settings: Settings, nc: Client, fresh_redis: None, redis_url: str
) -> None:
    broken = policy_settings.with_overrides({"policy.addr": "127.0.0.1:1", "policy.decision_timeout_s": 0.5})
    await run_service(SPEC, broken)
    # Refused (fail closed), as "unavailable": the caller may try again, unlike a policy's "no".
    with pytest.raises(UnavailableError, match="policy service"):
        await LifecycleClient(nc, actor="tester").create_from(simple())
    assert await keys(redis_url) == []


async def test_names_are_unique_per_tenant_until_terminated(lifecycle: LifecycleClient) -> None:
    first = (await lifecycle.create_from(simple("dup", tenant="t1"))).agent
    with pytest.raises(AlreadyExistsError, match="an agent named 'dup' already exists in tenant 't1'") as err:
        await lifecycle.create_from(simple("dup", tenant="t1"))
    assert err.value.metadata["agent_id"] == first.agent_id
    other_tenant = (await lifecycle.create_from(simple("dup", tenant="t2"))).agent
    assert other_tenant.state == S.AGENT_STATE_READY
    assert (await lifecycle.terminate(first.agent_id)).task_stopped
    again = (await lifecycle.create_from(simple("dup", tenant="t1"))).agent
    assert again.agent_id != first.agent_id


async def test_an_idempotency_key_makes_retries_safe(lifecycle: LifecycleClient) -> None:
    first, second = await asyncio.gather(
        lifecycle.create_from(simple("once"), idempotency_key="k-1"),
        lifecycle.create_from(simple("once"), idempotency_key="k-1"),
        return_exceptions=True,
    )
    made = [r for r in (first, second) if isinstance(r, agent_pb2.CreateAgentResponse)]
    assert made, (first, second)
    ids = {r.agent.agent_id for r in made}
    assert len(ids) == 1
    later = await lifecycle.create_from(simple("once"), idempotency_key="k-1")
    assert later.agent.agent_id in ids
    assert (await lifecycle.list()).page.total_size == 1


async def test_tasks_move_an_agent_between_ready_and_running(lifecycle: LifecycleClient) -> None:
    agent = (await lifecycle.create_from(simple())).agent
    a = agent.agent_id
    running = await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-1")
    assert running.agent.state == S.AGENT_STATE_RUNNING
    assert running.agent.current_task_id == "t-1"
    assert running.transition.task_id == "t-1"
    again = await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-1")
    assert again.agent.revision == running.agent.revision  # a repeated assignment changes nothing
    with pytest.raises(ConflictError, match="cannot go from running to running"):
        await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-2")
    with pytest.raises(ConflictError, match="not the agent's current task"):
        await lifecycle.transition(a, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED, task_id="t-9")
    done = await lifecycle.transition(
        a, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED, task_id="t-1", usage=usage(1.5)
    )
    assert done.agent.state == S.AGENT_STATE_READY
    assert done.agent.current_task_id == ""
    assert done.agent.usage.cpu_seconds == 1.5
    await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-2")
    done = await lifecycle.transition(
        a, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED, task_id="t-2", usage=usage(0.5)
    )
    assert done.agent.usage.cpu_seconds == 2.0
    assert done.agent.usage.wall_time.seconds == 2


@pytest.mark.parametrize(
    ("to", "cause", "message"),
    [
        (S.AGENT_STATE_SUSPENDED, S.TRANSITION_CAUSE_OVERRIDE, "cannot go from ready to suspended"),
        (S.AGENT_STATE_FAILED, S.TRANSITION_CAUSE_VALIDATION_FAILED, "cannot go from ready to failed"),
        (S.AGENT_STATE_INITIALIZING, S.TRANSITION_CAUSE_OVERRIDE, "cannot go from ready to initializing"),
        (S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_OVERRIDE, "caused by task_assigned, not override"),
    ],
)
async def test_illegal_transitions_are_refused_with_a_reason(
    lifecycle: LifecycleClient, to: int, cause: int, message: str
) -> None:
    agent = (await lifecycle.create_from(simple())).agent
    with pytest.raises(ConflictError, match=message):
        await lifecycle.transition(agent.agent_id, to, cause, task_id="t")
    assert (await lifecycle.get(agent.agent_id)).revision == agent.revision


async def test_bad_requests(lifecycle: LifecycleClient) -> None:
    with pytest.raises(NotFoundError):
        await lifecycle.get("0190aaaa-0000-7000-8000-00000000dead")
    with pytest.raises(InvalidArgumentError, match="not a UUID"):
        await lifecycle.get("../etc")
    with pytest.raises(InvalidArgumentError, match=r"use symbi.lifecycle.terminate"):
        await lifecycle.transition(
            "0190aaaa-0000-7000-8000-00000000dead", S.AGENT_STATE_TERMINATED, S.TRANSITION_CAUSE_OVERRIDE
        )
    agent = (await lifecycle.create_from(simple())).agent
    with pytest.raises(InvalidArgumentError, match="names its task_id"):
        await lifecycle.transition(agent.agent_id, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED)
    with pytest.raises(ConflictError, match="revision 2, not 1"):
        await lifecycle.transition(
            agent.agent_id, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t", expected_revision=1
        )


async def test_suspend_holds_the_task_and_resume_releases_it(
    lifecycle: LifecycleClient, scheduler: SchedulerDouble
) -> None:
    a = (await lifecycle.create_from(simple())).agent.agent_id
    await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-1")
    suspended = await lifecycle.suspend(a, "operator says so")
    assert suspended.agent.state == S.AGENT_STATE_SUSPENDED
    assert suspended.agent.state_reason == "operator says so"
    assert suspended.agent.current_task_id == "t-1"
    resumed = await lifecycle.resume(a)
    assert resumed.agent.state == S.AGENT_STATE_RUNNING
    assert scheduler.actions(a) == ["hold", "release"]
    violation = await lifecycle.transition(
        a, S.AGENT_STATE_SUSPENDED, S.TRANSITION_CAUSE_POLICY_VIOLATION, reason="sent pii to a tool"
    )
    assert violation.transition.cause == S.TRANSITION_CAUSE_POLICY_VIOLATION
    cleared = await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_CLEARED)
    assert cleared.agent.state == S.AGENT_STATE_RUNNING


async def test_a_suspension_whose_stop_is_not_confirmed_changes_nothing(
    lifecycle: LifecycleClient, scheduler: SchedulerDouble
) -> None:
    a = (await lifecycle.create_from(simple())).agent.agent_id
    running = await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-1")
    scheduler.stopped, scheduler.detail = False, "worker n1 did not answer"
    with pytest.raises(UnavailableError, match=r"cannot suspend agent .*: worker n1 did not answer"):
        await lifecycle.suspend(a)
    await scheduler.stop()
    with pytest.raises(UnavailableError, match="no service is listening"):
        await lifecycle.suspend(a)
    assert (await lifecycle.get(a)).revision == running.agent.revision


async def test_terminating_a_running_agent_confirms_the_stop(
    lifecycle: LifecycleClient, scheduler: SchedulerDouble
) -> None:
    a = (await lifecycle.create_from(simple())).agent.agent_id
    await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-1")
    scheduler.stopped, scheduler.detail = False, "the sandbox is still running"
    pending = await lifecycle.terminate(a, reason="done with it", grace_s=3)
    assert not pending.task_stopped
    assert pending.detail == "the sandbox is still running"
    assert pending.agent.state == S.AGENT_STATE_SUSPENDED
    assert pending.agent.state_reason == "termination pending: the sandbox is still running"
    assert scheduler.requests[-1].grace_period.seconds == 3

    scheduler.stopped, scheduler.detail = True, ""
    done = await lifecycle.terminate(a, reason="done with it")
    assert done.task_stopped
    assert done.agent.state == S.AGENT_STATE_TERMINATED
    assert done.agent.current_task_id == ""
    assert scheduler.actions(a) == ["cancel", "cancel"]
    path = [(t.from_state, t.to_state) for t in await lifecycle.history(a)][2:]
    assert path == [
        (S.AGENT_STATE_READY, S.AGENT_STATE_RUNNING),
        (S.AGENT_STATE_RUNNING, S.AGENT_STATE_SUSPENDED),
        (S.AGENT_STATE_SUSPENDED, S.AGENT_STATE_TERMINATED),
    ]
    again = await lifecycle.terminate(a)
    assert again.task_stopped
    assert again.agent.revision == done.agent.revision
    with pytest.raises(ConflictError, match="a terminated agent never changes state"):
        await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id="t-2")


async def test_an_idle_agent_terminates_without_a_scheduler(lifecycle: LifecycleClient) -> None:
    a = (await lifecycle.create_from(simple())).agent.agent_id
    done = await lifecycle.terminate(a)
    assert (done.task_stopped, done.agent.state) == (True, S.AGENT_STATE_TERMINATED)


async def test_termination_removes_the_agents_inline_policies(
    lifecycle: LifecycleClient, policy_settings: Settings
) -> None:
    agent = (await lifecycle.create_from(simple(policy='allow: tool_invoke on "tool:x/*"'))).agent
    policy_id = agent.definition.policies[0].registered_policy_id
    client = PolicyClient(policy_settings.policy.addr)
    try:
        assert (await client.get(policy_id)).id == policy_id
        await lifecycle.terminate(agent.agent_id)
        with pytest.raises(NotFoundError):
            await client.get(policy_id)
    finally:
        await client.close()


async def test_listing_counting_and_history_pages(lifecycle: LifecycleClient) -> None:
    made = [(await lifecycle.create_from(simple(f"lister_{i}", tenant=f"t{i % 2}"))).agent for i in range(7)]
    await lifecycle.terminate(made[0].agent_id)
    everything: list[agent_pb2.AgentRecord] = []
    token = ""
    while True:
        request = agent_pb2.ListAgentsRequest(omit_definitions=True)
        request.page.page_size, request.page.page_token = 3, token
        page = await lifecycle.list(request)
        everything.extend(page.agents)
        token = page.page.next_page_token
        if not token:
            break
    assert [a.agent_id for a in everything] == [a.agent_id for a in made]
    assert not everything[1].definition.capabilities
    assert everything[1].definition.metadata.name == "lister_1"
    ready = await lifecycle.list(agent_pb2.ListAgentsRequest(states=[S.AGENT_STATE_READY], tenant="t0"))
    assert [a.definition.metadata.name for a in ready.agents] == ["lister_2", "lister_4", "lister_6"]
    prefixed = await lifecycle.list(agent_pb2.ListAgentsRequest(name_prefix="lister_5"))
    assert [a.definition.metadata.name for a in prefixed.agents] == ["lister_5"]
    counts = await lifecycle.counts()
    assert counts.total == 7
    assert {c.state: c.count for c in counts.counts if c.count} == {
        S.AGENT_STATE_READY: 6,
        S.AGENT_STATE_TERMINATED: 1,
    }
    history = await lifecycle.history(made[0].agent_id, page_size=1)
    assert [t.revision for t in history] == [1, 2, 3]


async def test_two_replicas_cannot_both_win_a_revision(
    run_service: RunService, lifecycle: LifecycleClient, policy_settings: Settings
) -> None:
    await run_service(SPEC, policy_settings)  # a second replica in the same queue group
    agent = (await lifecycle.create_from(simple())).agent
    attempts = [
        lifecycle.transition(
            agent.agent_id,
            S.AGENT_STATE_RUNNING,
            S.TRANSITION_CAUSE_TASK_ASSIGNED,
            task_id=f"t-{i}",
            expected_revision=agent.revision,
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    won = [r for r in results if isinstance(r, agent_pb2.TransitionAgentResponse)]
    assert len(won) == 1
    assert all(isinstance(r, ConflictError) for r in results if r not in won)
    history = await lifecycle.history(agent.agent_id)
    assert [t.revision for t in history] == [1, 2, 3]


async def test_concurrent_task_cycles_through_two_replicas_keep_a_legal_history(
    run_service: RunService, lifecycle: LifecycleClient, policy_settings: Settings
) -> None:
    await run_service(SPEC, policy_settings)
    agent = (await lifecycle.create_from(simple())).agent

    async def cycle(i: int) -> None:
        try:
            await lifecycle.transition(
                agent.agent_id, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id=f"t-{i}"
            )
        except ConflictError:
            return  # another task holds the agent
        await lifecycle.transition(
            agent.agent_id, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED, task_id=f"t-{i}"
        )

    for _ in range(3):
        await asyncio.gather(*(cycle(i) for i in range(6)))
    history = await lifecycle.history(agent.agent_id)
    assert [t.revision for t in history] == list(range(1, len(history) + 1))
    for earlier, later in itertools.pairwise(history):
        assert earlier.to_state == later.from_state
    running = [t for t in history if t.to_state == S.AGENT_STATE_RUNNING]
    completed = [t for t in history if t.from_state == S.AGENT_STATE_RUNNING]
    assert [t.task_id for t in running] == [t.task_id for t in completed]
    assert len(running) >= 3


async def test_a_restarted_service_recovers_every_agent_and_event(
    run_service: RunService, policy_settings: Settings, nc: Client, fresh_redis: None, fresh_audit_streams: None
) -> None:
    first = await run_service(SPEC, policy_settings)
    client = LifecycleClient(nc, actor="tester")
    made = [(await client.create_from(simple(f"survivor_{i}"))).agent for i in range(5)]
    await first.shutdown()

    # A crash left one agent half-created and one transition stored but never published.
    redis = aioredis.Redis.from_url(policy_settings.redis.url)
    agents = store.AgentStore(redis)
    half = agent_pb2.AgentRecord(agent_id="0190aaaa-0000-7000-8000-0000000000aa", state=S.AGENT_STATE_INITIALIZING)
    half.definition.CopyFrom(made[0].definition)
    half.definition.metadata.name = "half_made"
    half.definition.source.CopyFrom(simple("half_made"))
    half.revision = 1
    lost = agent_pb2.StateTransition(
        agent_id=half.agent_id,
        to_state=S.AGENT_STATE_INITIALIZING,
        revision=1,
        event_id="0190aaaa-0000-7000-8000-0000000000ab",
    )
    lost.time.GetCurrentTime()
    outbound = events.pack(lost, events.audit_event(lost, half, "crashed-replica"))
    await agents.create(half, lost, outbound, (b"s" * 32, b"a" * 32))
    await redis.aclose()

    await run_service(SPEC, policy_settings)
    for agent in made:
        assert await client.get(agent.agent_id) == agent
    recovered = await client.get(half.agent_id)
    assert recovered.state == S.AGENT_STATE_READY
    audited = await wait_for_audit(nc, "agent.>", lambda _: True, count=5 * 2 + 2)
    assert "0190aaaa-0000-7000-8000-0000000000ab" in {e.event_id for e in audited}
    assert [e.event_type for e in audited if e.agent_id == half.agent_id] == [events.CREATED, events.STATE_CHANGED]


async def test_every_transition_is_audited_once_in_order(lifecycle: LifecycleClient, nc: Client) -> None:
    a = (await lifecycle.create_from(simple())).agent.agent_id
    for i in range(3):
        await lifecycle.transition(a, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED, task_id=f"t{i}")
        await lifecycle.transition(a, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED, task_id=f"t{i}")
    await lifecycle.terminate(a)
    history = await lifecycle.history(a)
    audited = await wait_for_audit(nc, "agent.>", lambda _: True, count=len(history))
    assert [e.event_id for e in audited] == [t.event_id for t in history]
    assert all(e.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS for e in audited)
    assert [details(e)["to"] for e in audited][-1] == "terminated"
    assert [details(e)["revision"] for e in audited] == list(range(1, len(history) + 1))
