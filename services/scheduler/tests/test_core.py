"""Scheduling decisions without I/O: strategies, no over-commitment, preemption, failures."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_scheduler.core import CoreOptions, Outcome, Place, Preempt, SchedulerCore
from symbi_scheduler.queues import LEVELS

T = task_pb2
LOW, NORMAL, HIGH, CRITICAL = LEVELS
TIER1, TIER2 = sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
counter = itertools.count()


def capacity(
    node: str, memory: int, cpu: float, *, slots: int = 10, tiers: tuple[int, ...] = (TIER1, TIER2), seq: int = 1
) -> task_pb2.WorkerCapacity:
    report = T.WorkerCapacity(node=node, instance_id=f"{node}-1", sequence=seq)
    report.total.memory_mb, report.total.cpu_cores, report.total.task_slots = memory, cpu, slots
    report.total.disk_io_mbps = report.total.network_io_mbps = 1000
    for tier in tiers:
        report.tiers.add(tier=tier, available=True)
    report.report_interval.FromSeconds(1)
    return report


def task(memory: int = 100, cpu: float = 0.5, priority: int = NORMAL, *, agent: str = "", tier: int = TIER1,
         tenant: str = "t") -> task_pb2.Task:  # fmt: skip
    n = next(counter)
    t = T.Task(task_id=f"task-{n}", agent_id=agent or f"agent-{n}", tenant=tenant, attempt=1,
               preemptible=priority < CRITICAL)  # fmt: skip
    t.priority, t.tier = priority, tier  # type: ignore[assignment]
    t.limits.memory_mb, t.limits.cpu_cores = memory, cpu
    t.limits.execution_timeout.FromSeconds(60)
    return t


def core_with(*workers: task_pb2.WorkerCapacity, **options: object) -> SchedulerCore:
    core = SchedulerCore(CoreOptions(**options))  # type: ignore[arg-type]
    for report in workers:
        core.on_capacity(report, 0.0)
    return core


def run(core: SchedulerCore, now: float = 0.0) -> list[Place | Preempt]:
    out = []
    while (decision := core.decide(now)) is not None:
        out.append(decision)
    return out


def report(core: SchedulerCore, task_id: str, state: int, *, exit_reason: int = 0, seq: int = 0) -> Outcome:
    status = core.tasks[task_id].status
    r = T.TaskStatusReport(task_id=task_id, node=status.node)
    r.state, r.exit_reason = state, exit_reason  # type: ignore[assignment]
    r.sequence = seq or (status.report.sequence + 1 if status.HasField("report") else 1)
    return core.on_report(r, 1.0)


WORKERS = (capacity("a-small", 1000, 2), capacity("b-large", 8000, 8), capacity("c-medium", 4000, 4))


def test_first_fit_takes_the_first_worker_by_name_with_room() -> None:
    core = core_with(*WORKERS, strategy="first_fit")
    for need in (600, 600, 300):
        core.submit(task(need), 0)
    assert [d.node for d in run(core) if isinstance(d, Place)] == ["a-small", "b-large", "a-small"]


def test_best_fit_packs_the_tightest_worker() -> None:
    core = core_with(*WORKERS, strategy="best_fit")
    core.submit(task(3500, 1), 0)
    core.submit(task(900, 1), 0)
    nodes = [d.node for d in run(core) if isinstance(d, Place)]
    assert nodes == ["c-medium", "a-small"]


def test_priority_strategy_spreads_load() -> None:
    core = core_with(capacity("a", 4000, 4), capacity("b", 4000, 4), capacity("c", 4000, 4), strategy="priority")
    for _ in range(6):
        core.submit(task(500, 0.5), 0)
    nodes = [d.node for d in run(core) if isinstance(d, Place)]
    assert sorted(nodes) == ["a", "a", "b", "b", "c", "c"]


def test_tasks_go_only_where_their_tier_runs() -> None:
    core = core_with(capacity("gvisor", 4000, 4, tiers=(TIER2,)), capacity("plain", 4000, 4, tiers=(TIER1,)))
    core.submit(task(tier=TIER2), 0)
    core.submit(task(tier=TIER1), 0)
    nodes = sorted(d.node for d in run(core) if isinstance(d, Place))
    assert nodes == ["gvisor", "plain"]


def test_an_impossible_request_is_refused_with_the_largest_worker() -> None:
    core = core_with(*WORKERS)
    with pytest.raises(InvalidArgumentError, match=r"largest worker with that tier \(b-large\) has 8000 MiB and 8 CPU"):
        core.submit(task(9000, 1), 0)
    with pytest.raises(
        InvalidArgumentError, match=r"none runs SANDBOX_TIER_TIER2_GVISOR \(tiers available: SANDBOX_TIER_TIER1"
    ):
        core_with(capacity("plain", 4000, 4, tiers=(TIER1,))).submit(task(tier=TIER2), 0)
    assert core.queue.waiting == 0


def test_without_workers_tasks_wait() -> None:
    core = core_with()
    core.submit(task(9000, 1), 0)
    assert run(core) == []
    core.on_capacity(capacity("late", 10_000, 4), 1.0)
    assert [d.node for d in run(core)] == ["late"]


@settings(max_examples=200, deadline=None)
@given(
    workers=st.lists(
        st.tuples(st.integers(256, 8192), st.sampled_from([0.5, 1, 2, 4]), st.integers(1, 6)), min_size=1, max_size=4
    ),
    tasks=st.lists(
        st.tuples(st.integers(1, 4096), st.sampled_from([0.1, 0.25, 0.5, 1, 2]), st.sampled_from(LEVELS)), max_size=40
    ),
    strategy=st.sampled_from(["first_fit", "best_fit", "priority"]),
    finish=st.lists(st.integers(0, 39), max_size=20),
)
def test_placement_never_over_commits(
    workers: list[tuple[int, float, int]], tasks: list[tuple[int, float, int]], strategy: str, finish: list[int]
) -> None:
    core = core_with(*(capacity(f"w{i}", m, c, slots=s) for i, (m, c, s) in enumerate(workers)), strategy=strategy)
    submitted = []
    for memory, cpu, priority in tasks:
        t = task(memory, cpu, priority)
        try:
            core.submit(t, 0)
            submitted.append(t.task_id)
        except InvalidArgumentError:
            pass
    for step in range(3):
        for decision in run(core, step):
            if isinstance(decision, Preempt):
                for victim in decision.victims:
                    report(core, victim, T.TASK_STATE_CANCELLED, exit_reason=T.TASK_EXIT_REASON_STOPPED)
        for index in finish:
            if index < len(submitted) and core.tasks[submitted[index]].status.state == T.TASK_STATE_SCHEDULED:
                report(core, submitted[index], T.TASK_STATE_SUCCEEDED, exit_reason=T.TASK_EXIT_REASON_EXITED)
        for worker in core.workers.values():
            placed = [core.tasks[t].status.task.limits for t in worker.placed]
            assert sum(p.memory_mb for p in placed) <= worker.total.memory_mb
            assert sum(p.cpu_cores for p in placed) <= worker.total.cpu_cores + 1e-6
            assert len(placed) <= worker.slots
            assert worker.memory_used == sum(p.memory_mb for p in placed)


def test_a_higher_task_preempts_the_fewest_lowest_tasks() -> None:
    core = core_with(capacity("only", 1000, 4))
    low_a, low_b, normal = task(400, 1, LOW), task(400, 1, LOW), task(200, 1, NORMAL)
    for t in (low_a, low_b, normal):
        core.submit(t, 0)
    assert len(run(core)) == 3
    report(core, low_a.task_id, T.TASK_STATE_RUNNING)
    report(core, low_b.task_id, T.TASK_STATE_RUNNING)
    urgent = task(400, 1, CRITICAL)
    core.submit(urgent, 1)
    (decision,) = run(core, 1)
    assert isinstance(decision, Preempt)
    assert decision.victims in ((low_a.task_id,), (low_b.task_id,))  # one low task is enough; never the normal one
    (victim,) = decision.victims
    assert run(core, 1) == []  # no second preemption while the first victim stops
    assert report(core, victim, T.TASK_STATE_CANCELLED, exit_reason=T.TASK_EXIT_REASON_STOPPED) is Outcome.REQUEUED
    status = core.tasks[victim].status
    assert (status.state, status.preemptions, status.task.attempt) == (T.TASK_STATE_QUEUED, 1, 2)
    placed = run(core, 1)
    assert placed == [Place(urgent.task_id, "only")]


def test_nothing_is_preempted_for_an_equal_or_lower_priority() -> None:
    core = core_with(capacity("only", 1000, 4))
    core.submit(task(1000, 1, HIGH), 0)
    run(core)
    core.submit(task(1000, 1, HIGH), 0)
    core.submit(task(1000, 1, LOW), 0)
    assert run(core) == []
    assert core_with(capacity("x", 1000, 4), preemption=False).decide(0) is None


def test_completion_settles_the_task_and_lets_the_agents_next_task_in() -> None:
    core = core_with(capacity("w", 4000, 4))
    first, second = task(agent="a"), task(agent="a")
    core.submit(first, 0)
    core.submit(second, 0)
    assert [d.task_id for d in run(core)] == [first.task_id]
    assert report(core, first.task_id, T.TASK_STATE_RUNNING) is Outcome.STARTED
    assert report(core, first.task_id, T.TASK_STATE_SUCCEEDED, exit_reason=T.TASK_EXIT_REASON_EXITED) is Outcome.DONE
    assert core.tasks[first.task_id].status.state == T.TASK_STATE_SUCCEEDED
    assert core.workers["w"].memory_used == 0
    assert [d.task_id for d in run(core)] == [second.task_id]


def test_a_resource_limit_breach_holds_the_task_for_its_agent() -> None:
    core = core_with(capacity("w", 4000, 4), max_attempts=2)
    t = task(agent="a")
    core.submit(t, 0)
    run(core)
    assert report(core, t.task_id, T.TASK_STATE_FAILED, exit_reason=T.TASK_EXIT_REASON_OOM_KILLED) is Outcome.LIMIT
    status = core.tasks[t.task_id].status
    assert (status.state, status.held, status.task.attempt) == (T.TASK_STATE_QUEUED, True, 2)
    assert run(core) == []
    assert core.release_agent("a") == [t.task_id]
    run(core)
    assert report(core, t.task_id, T.TASK_STATE_FAILED, exit_reason=T.TASK_EXIT_REASON_TIMED_OUT) is Outcome.LIMIT
    assert core.tasks[t.task_id].status.state == T.TASK_STATE_FAILED  # no attempts left


def test_a_silent_worker_is_lost_and_its_tasks_requeued() -> None:
    core = core_with(capacity("dies", 4000, 4), capacity("lives", 4000, 4), strategy="first_fit")
    t = task()
    core.submit(t, 0)
    assert run(core) == [Place(t.task_id, "dies")]
    core.on_capacity(capacity("lives", 4000, 4, seq=2), 3.5)
    assert core.expire(3.5) == []
    assert core.workers["dies"].lost
    assert core.tasks[t.task_id].status.state == T.TASK_STATE_QUEUED
    assert core.tasks[t.task_id].status.task.attempt == 2
    assert run(core, 3.5) == [Place(t.task_id, "lives")]
    orphans, _ = core.on_capacity(_running(capacity("dies", 4000, 4, seq=9), t.task_id), 4.0)
    assert orphans == [t.task_id]  # it came back still running the task: it is stopped there


def _running(report: task_pb2.WorkerCapacity, *task_ids: str) -> task_pb2.WorkerCapacity:
    report.running_task_ids.extend(task_ids)
    return report


def test_a_task_past_its_timeout_is_stopped() -> None:
    core = core_with(capacity("w", 4000, 4), timeout_grace_s=1)
    t = task()
    core.submit(t, 0)
    run(core)
    status = core.tasks[t.task_id].status
    r = T.TaskStatusReport(task_id=t.task_id, node="w", state=T.TASK_STATE_RUNNING, sequence=1)
    core.on_report(r, 10.0)
    assert status.state == T.TASK_STATE_RUNNING
    for seq, now in enumerate((70.5, 71.5, 72), start=2):
        core.on_capacity(capacity("w", 4000, 4, seq=seq), now)  # the worker keeps reporting
    assert core.expire(70.5) == []
    assert core.expire(71.5) == [(t.task_id, "w")]
    assert core.expire(72) == []  # asked once


def test_stale_and_foreign_reports_are_ignored() -> None:
    core = core_with(capacity("w", 4000, 4))
    t = task()
    core.submit(t, 0)
    run(core)
    assert report(core, t.task_id, T.TASK_STATE_RUNNING, seq=5) is Outcome.STARTED
    assert report(core, t.task_id, T.TASK_STATE_SUCCEEDED, seq=4) is Outcome.NOTHING
    foreign = T.TaskStatusReport(task_id=t.task_id, node="elsewhere", state=T.TASK_STATE_SUCCEEDED, sequence=9)
    assert core.on_report(foreign, 1) is Outcome.NOTHING
    assert core.tasks[t.task_id].status.state == T.TASK_STATE_RUNNING


def test_restore_rebuilds_queue_and_reservations() -> None:
    core = core_with(capacity("w", 1000, 4))
    placed, queued, held = task(600, agent="p"), task(600, agent="q"), task(100, agent="h")
    core.hold_agent("h")
    for t in (placed, queued, held):
        core.submit(t, 0)
    run(core)
    statuses = [core.tasks[t.task_id].status for t in (placed, queued, held)]
    fresh = SchedulerCore(CoreOptions())
    assert fresh.restore(statuses, 100.0) == 3
    assert fresh.workers["w"].memory_used == 600
    assert not fresh.workers["w"].usable or fresh.workers["w"].total.memory_mb == 0  # unknown until it reports
    fresh.on_capacity(capacity("w", 1000, 4), 100.0)
    assert run(fresh, 100) == []  # 600 + 600 > 1000: the queued one still waits
    assert fresh.tasks[held.task_id].status.held
    report(fresh, placed.task_id, T.TASK_STATE_SUCCEEDED, exit_reason=T.TASK_EXIT_REASON_EXITED)
    assert run(fresh, 100) == [Place(queued.task_id, "w")]


def test_cancelling_an_agent_cancels_queued_and_returns_running() -> None:
    core = core_with(capacity("w", 1000, 4))
    running, waiting = task(600, agent="a"), task(600, agent="a")
    core.submit(running, 0)
    core.submit(waiting, 0)
    run(core)
    targets = core.cancel_agent("a", "terminated")
    assert targets == [(running.task_id, "w")]
    assert core.tasks[waiting.task_id].status.state == T.TASK_STATE_CANCELLED
    stop = report(core, running.task_id, T.TASK_STATE_CANCELLED, exit_reason=T.TASK_EXIT_REASON_STOPPED)
    assert stop is Outcome.CLOSED
    assert core.queue.waiting == 0
