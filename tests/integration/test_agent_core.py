"""The agent core end to end on real NATS and Redis: lifecycle, scheduler, policy and workers together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from symbi_testing.checks import components, eventually, health_of
from symbi_testing.streams import audit_events, details

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError, UnavailableError
from symbi_lifecycle.definitions import source_of
from symbi_proto.v1 import agent_pb2, sandbox_pb2, task_pb2
from symbi_scheduler.service import SPEC as SCHEDULER

from .conftest import AgentStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "agents").iterdir())
A = agent_pb2
T = task_pb2
LOW, NORMAL, HIGH, CRITICAL = (T.TASK_PRIORITY_LOW, T.TASK_PRIORITY_NORMAL, T.TASK_PRIORITY_HIGH,
                               T.TASK_PRIORITY_CRITICAL)  # fmt: skip


async def test_every_example_agent_goes_through_its_whole_lifecycle(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("node-a", memory=8192, cpu=8)
    for path in EXAMPLES:
        created = await stack.lifecycle.create_from(source_of(path))
        assert not created.issues, (path, created.issues)
        agent = created.agent
        assert agent.state == A.AGENT_STATE_READY
        task_id = await stack.run(agent.agent_id)
        final = await stack.final(task_id)
        assert final.state == T.TASK_STATE_SUCCEEDED, (path.name, final.reason)
        assert final.report.runtime == "simulated"
        requested = agent.definition.options.sandbox_tier or sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
        assert final.task.tier == final.task.risk.chosen_tier >= requested
        assert final.task.risk.reason.startswith("score ")
        ready = await stack.agent_state(agent.agent_id, A.AGENT_STATE_READY)
        assert ready.usage.wall_time.ToNanoseconds() > 0
        done = await stack.lifecycle.terminate(agent.agent_id, reason="example finished")
        assert (done.task_stopped, done.agent.state) == (True, A.AGENT_STATE_TERMINATED)
        path_taken = [(t.from_state, t.to_state) for t in await stack.lifecycle.history(agent.agent_id)]
        assert path_taken == [
            (A.AGENT_STATE_UNSPECIFIED, A.AGENT_STATE_INITIALIZING),
            (A.AGENT_STATE_INITIALIZING, A.AGENT_STATE_READY),
            (A.AGENT_STATE_READY, A.AGENT_STATE_RUNNING),
            (A.AGENT_STATE_RUNNING, A.AGENT_STATE_READY),
            (A.AGENT_STATE_READY, A.AGENT_STATE_TERMINATED),
        ], path.name
    audited = await audit_events(stack.nc, "agent.>")
    assert len(audited) == 5 * len(EXAMPLES)
    admitted = await audit_events(stack.nc, "task.admitted")
    assert len(admitted) == len(EXAMPLES)
    assert all(details(e)["risk_reason"].startswith("score ") for e in admitted)
    decisions = await audit_events(stack.nc, "policy.decision")
    assert sum(
        1 for d in decisions if d.details.fields["enforcement_point"].string_value == "resource_allocate"
    ) >= len(EXAMPLES)


async def test_a_busy_worker_runs_queued_tasks_by_priority(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("solo", slots=1)
    blocker = await stack.agent("blocker", seconds=1.0)
    first = await stack.run(blocker.agent_id)
    await stack.state(first, T.TASK_STATE_RUNNING)
    order = []
    for priority, name in ((LOW, "low"), (NORMAL, "normal"), (CRITICAL, "critical"), (HIGH, "high")):
        agent = await stack.agent(f"p_{name}", seconds=0.05)
        order.append((name, await stack.run(agent.agent_id, priority=priority)))
    finished = {name: await stack.final(task_id) for name, task_id in order}
    by_end = sorted(finished, key=lambda n: finished[n].report.finished_at.ToNanoseconds())
    assert by_end == ["critical", "high", "normal", "low"]


@pytest.mark.scheduler(aging_interval_s=0.4, preemption=False)
async def test_aging_lets_an_old_low_task_past_newer_high_ones(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("solo", slots=1)
    blocker = await stack.agent("blocker", seconds=1.5)
    await stack.state(await stack.run(blocker.agent_id), T.TASK_STATE_RUNNING)
    low = await stack.agent("patient", seconds=0.05)
    low_task = await stack.run(low.agent_id, priority=LOW)
    await asyncio.sleep(1.2)  # the low task ages three levels: LOW -> CRITICAL-equivalent
    highs = []
    for i in range(3):
        agent = await stack.agent(f"eager_{i}", seconds=0.05)
        highs.append(await stack.run(agent.agent_id, priority=HIGH))
    low_end = (await stack.final(low_task)).report.finished_at.ToNanoseconds()
    for task_id in highs:
        assert (await stack.final(task_id)).report.finished_at.ToNanoseconds() > low_end


async def test_a_critical_task_preempts_a_low_one_which_runs_later(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("solo", memory=1000, slots=4)
    low = await stack.agent("background", seconds=3.0, memory=800, priority="low")
    low_task = await stack.run(low.agent_id)
    await stack.state(low_task, T.TASK_STATE_RUNNING)
    urgent = await stack.agent("urgent", seconds=0.2, memory=800)
    urgent_task = await stack.run(urgent.agent_id, priority=CRITICAL)
    assert (await stack.final(urgent_task)).state == T.TASK_STATE_SUCCEEDED
    low_status = await stack.scheduler.get_task(low_task)
    assert low_status.preemptions == 1
    assert low_status.task.attempt == 2
    assert (await stack.lifecycle.get(low.agent_id)).state == A.AGENT_STATE_RUNNING  # still its task
    assert (await stack.final(low_task, timeout_s=20)).state == T.TASK_STATE_SUCCEEDED


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("first_fit", ["w-a", "w-a", "w-a"]),
        ("best_fit", ["w-c", "w-c", "w-b"]),
        ("priority", ["w-a", "w-b", "w-c"]),
    ],
)
async def test_each_placement_strategy_across_three_workers(
    strategy: str, expected: list[str], agent_stack: AgentStack
) -> None:
    stack = agent_stack
    scheduler = stack.runners["scheduler"]
    await scheduler.shutdown()
    await stack.start("scheduler", stack.settings.with_overrides({"scheduler.strategy": strategy}))
    await stack.worker("w-a", memory=4000, cpu=4)
    await stack.worker("w-b", memory=2000, cpu=2)
    await stack.worker("w-c", memory=1000, cpu=1)
    placed = []
    for i in range(3):
        agent = await stack.agent(f"placed_{i}", seconds=5, memory=450, cpu=0.25)
        task_id = await stack.run(agent.agent_id)
        placed.append((await stack.state(task_id, T.TASK_STATE_RUNNING)).node)
    assert placed == expected
    status = await stack.scheduler.status()
    reserved = {w.capacity.node: w.reserved.memory_mb for w in status.workers}
    assert sum(reserved.values()) == 3 * 450


async def test_an_impossible_or_forbidden_request_is_refused_clearly(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("small", memory=512, cpu=1)
    huge = await stack.agent("huge", memory=4000)
    with pytest.raises(InvalidArgumentError, match=r"no worker can ever run this task: it asks for 4000 MiB"):
        await stack.run(huge.agent_id)
    blocked = await stack.agent("blocked_agent", tenant="blocked")
    with pytest.raises(PermissionDeniedError, match="tenant blocked may not run tasks"):
        await stack.run(blocked.agent_id)
    greedy = await stack.agent("greedy", memory=9000)
    with pytest.raises(PermissionDeniedError, match="exceeds the limit 8192"):
        await stack.run(greedy.agent_id)
    with pytest.raises(InvalidArgumentError, match="not a UUID"):
        await stack.run("nope")
    assert await stack.scheduler.list_tasks() == []
    done = await stack.lifecycle.terminate(blocked.agent_id)
    with pytest.raises(FailedPreconditionError, match="is terminated"):
        await stack.run(done.agent.agent_id)


async def test_policy_conditions_cap_limits_and_raise_the_tier(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("any", memory=4096)
    agent = await stack.agent("capped_agent", tenant="capped", memory=1024, timeout="5m", tier="Tier1")
    status = await stack.final(await stack.run(agent.agent_id))
    assert status.task.limits.memory_mb == 128
    assert status.task.limits.execution_timeout.seconds == 20
    assert status.task.tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
    assert status.task.decision_id


async def test_terminate_confirms_the_stop_of_a_running_task(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("w")
    agent = await stack.agent("long_runner", seconds=60)
    task_id = await stack.run(agent.agent_id)
    await stack.state(task_id, T.TASK_STATE_RUNNING)
    done = await stack.lifecycle.terminate(agent.agent_id, reason="enough")
    assert done.task_stopped
    assert done.agent.state == A.AGENT_STATE_TERMINATED
    status = await stack.scheduler.get_task(task_id)
    assert status.state == T.TASK_STATE_CANCELLED
    assert status.report.exit_reason == T.TASK_EXIT_REASON_STOPPED  # the worker confirmed it


async def test_a_stop_the_sandbox_cannot_confirm_is_never_reported_as_success(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("w")
    agent = await stack.agent("stuck", seconds=60, labels={"symbi.simulate/ignore_stop": "true"})
    task_id = await stack.run(agent.agent_id)
    await stack.state(task_id, T.TASK_STATE_RUNNING)
    pending = await stack.lifecycle.terminate(agent.agent_id, reason="try")
    assert not pending.task_stopped
    assert "did not confirm" in pending.detail
    assert pending.agent.state == A.AGENT_STATE_SUSPENDED
    assert (await stack.scheduler.get_task(task_id)).state == T.TASK_STATE_RUNNING


async def test_suspend_stops_and_holds_resume_runs_again(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("w")
    agent = await stack.agent("pausable", seconds=2)
    task_id = await stack.run(agent.agent_id)
    await stack.state(task_id, T.TASK_STATE_RUNNING)
    suspended = await stack.lifecycle.suspend(agent.agent_id, "maintenance")
    assert suspended.agent.state == A.AGENT_STATE_SUSPENDED
    held = await stack.scheduler.get_task(task_id)
    assert (held.state, held.held) == (T.TASK_STATE_QUEUED, True)
    await asyncio.sleep(0.3)
    assert (await stack.scheduler.get_task(task_id)).state == T.TASK_STATE_QUEUED  # not placed while suspended
    await stack.lifecycle.resume(agent.agent_id)
    final = await stack.final(task_id)
    assert final.state == T.TASK_STATE_SUCCEEDED
    assert final.task.attempt == 2
    await stack.agent_state(agent.agent_id, A.AGENT_STATE_READY)


async def test_a_memory_breach_suspends_the_agent_until_resumed(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("w")
    agent = await stack.agent("hungry", memory=64, labels={"symbi.simulate/memory_mb": "200"})
    task_id = await stack.run(agent.agent_id)
    record = await stack.agent_state(agent.agent_id, A.AGENT_STATE_SUSPENDED)
    assert "killed: used 200 MiB of 64" in record.state_reason
    history = await stack.lifecycle.history(agent.agent_id)
    assert history[-1].cause == A.TRANSITION_CAUSE_RESOURCE_LIMIT
    status = await stack.scheduler.get_task(task_id)
    assert (status.state, status.held, status.report.exit_reason) == (
        T.TASK_STATE_QUEUED,
        True,
        T.TASK_EXIT_REASON_OOM_KILLED,
    )


async def test_a_task_past_its_timeout_is_killed(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("w")
    agent = await stack.agent("slowpoke", seconds=30, timeout="300ms")
    task_id = await stack.run(agent.agent_id)
    record = await stack.agent_state(agent.agent_id, A.AGENT_STATE_SUSPENDED)
    assert "killed after 0.3s" in record.state_reason
    assert (await stack.scheduler.get_task(task_id)).report.exit_reason == T.TASK_EXIT_REASON_TIMED_OUT


async def test_a_lost_workers_tasks_are_rescheduled(agent_stack: AgentStack) -> None:
    stack = agent_stack
    doomed = await stack.worker("doomed")
    agent = await stack.agent("survivor", seconds=1.0)
    task_id = await stack.run(agent.agent_id)
    assert (await stack.state(task_id, T.TASK_STATE_RUNNING)).node == "doomed"
    assert doomed.ctx is not None
    await doomed.ctx.nc.close()  # the node vanishes: no drain, no goodbye
    await stack.worker("rescuer")
    final = await stack.final(task_id, timeout_s=20)
    assert final.state == T.TASK_STATE_SUCCEEDED
    assert final.node == "rescuer"
    assert list(final.history) == ["doomed", "rescuer"]
    status = await stack.scheduler.status()
    assert {w.capacity.node: w.lost for w in status.workers}["doomed"]


async def test_restarting_the_scheduler_and_lifecycle_loses_nothing(agent_stack: AgentStack) -> None:
    stack = agent_stack
    agents = [await stack.agent(f"patient_{i}", seconds=0.1) for i in range(4)]
    queued = [await stack.run(a.agent_id, priority=LOW + i % 4) for i, a in enumerate(agents)]
    await stack.runners["scheduler"].shutdown()
    await stack.runners["lifecycle"].shutdown()
    await stack.start("lifecycle")
    await stack.start("scheduler")
    for task_id in queued:
        assert (await stack.scheduler.get_task(task_id)).state == T.TASK_STATE_QUEUED
    for agent in agents:
        assert (await stack.lifecycle.get(agent.agent_id)).state == A.AGENT_STATE_READY
    await stack.worker("late")
    for task_id in queued:
        assert (await stack.final(task_id)).state == T.TASK_STATE_SUCCEEDED


async def test_a_standby_scheduler_takes_over(agent_stack: AgentStack) -> None:
    stack = agent_stack
    active = stack.runners["scheduler"]
    standby = asyncio.ensure_future(stack.run_service(SCHEDULER, stack.settings))
    await asyncio.sleep(0.6)
    assert not standby.done()  # it waits for the lease
    agent = await stack.agent("handed_over", seconds=0.1)
    task_id = await stack.run(agent.agent_id)
    await active.shutdown()  # gives the lease up
    await asyncio.wait_for(standby, 15)
    await stack.worker("w")
    assert (await stack.final(task_id)).state == T.TASK_STATE_SUCCEEDED


async def test_a_replica_that_loses_its_lease_stops_scheduling(agent_stack: AgentStack, redis_url: str) -> None:
    stack = agent_stack
    agent = await stack.agent("orphaned", seconds=0.1)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set("symbi:sched:leader", "someone-else")  # another replica took over
    finally:
        await client.aclose()

    async def refused() -> bool:
        try:
            await stack.run(agent.agent_id)
        except UnavailableError as exc:
            return "lost its lease" in exc.message
        return False

    await eventually(refused, timeout_s=10, what="the replica stops scheduling")
    status = await health_of(stack.nc, "scheduler")
    assert components(status)["scheduling"].detail == "lost the scheduling lease"


async def test_the_scheduler_runs_real_tasks_in_both_tiers(agent_stack: AgentStack) -> None:
    """Example agents, placed by the scheduler on a worker with the Docker runner: runc and gVisor for real."""
    stack = agent_stack
    await stack.worker("docker-node", runner="docker", memory=4096, cpu=2)
    for name, runtime in (("research_assistant.symbi", "runc"), ("data_pipeline.symbi", "runsc")):
        created = await stack.lifecycle.create_from(source_of(ROOT / "examples" / "agents" / name))
        agent = created.agent
        final = await stack.final(await stack.run(agent.agent_id), timeout_s=90)
        assert final.state == T.TASK_STATE_SUCCEEDED, (name, final.reason, final.report.detail)
        assert (final.report.runtime, final.report.exit_code) == (runtime, 0)
        assert final.report.output_bytes > 0
        await stack.agent_state(agent.agent_id, A.AGENT_STATE_READY)
