"""The worker contract on real NATS: capacity reports, start (and its refusals), stop, status, drain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import pytest
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from symbi_testing.checks import components, eventually, health_of
from symbi_testing.fixtures import RunService

from symbi_common import natsio, subjects
from symbi_common.settings import Settings
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.runners import SimulatedRunner
from symbi_sandbox_orchestrator.service import SPEC, node_name

pytestmark = pytest.mark.integration
T = task_pb2
TIER1, TIER2 = sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR


def task(
    task_id: str, *, memory: int = 100, seconds: float = 0.1, attempt: int = 1, labels: dict[str, str] | None = None
) -> task_pb2.Task:
    t = T.Task(task_id=task_id, agent_id="agent-1", attempt=attempt, tier=TIER1)
    t.limits.memory_mb, t.limits.cpu_cores = memory, 0.5
    t.limits.execution_timeout.FromSeconds(30)
    t.labels["symbi.simulate/seconds"] = str(seconds)
    for key, value in (labels or {}).items():
        t.labels[f"symbi.simulate/{key}"] = value
    return t


R = TypeVar("R", bound=Message)


async def ask(nc: Client, operation: str, message: Message, reply: type[R]) -> R:
    return await natsio.request(nc, subjects.sandbox("w1", operation), message, reply, timeout=10)


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        {
            "sandbox.runner": "simulated",
            "sandbox.node": "w1",
            "sandbox.memory_mb": 1000,
            "sandbox.cpu_cores": 2,
            "sandbox.task_slots": 3,
            "sandbox.report_interval_s": 0.2,
        }
    )


async def test_capacity_reports_follow_what_runs(
    run_service: RunService, worker_settings: Settings, nc: Client
) -> None:
    reports: list[task_pb2.WorkerCapacity] = []

    async def on_report(msg: Msg) -> None:
        reports.append(T.WorkerCapacity.FromString(msg.data))

    await nc.subscribe(subjects.worker_capacity("w1"), cb=on_report)
    await run_service(SPEC, worker_settings)
    await eventually(lambda: len(reports) >= 2, what="periodic capacity reports")
    first = reports[-1]
    assert (first.node, first.total.memory_mb, first.total.cpu_cores, first.total.task_slots) == ("w1", 1000, 2, 3)
    assert {t.tier for t in first.tiers if t.available} == {TIER1, TIER2}
    assert [r.sequence for r in reports] == sorted(r.sequence for r in reports)
    reply = await ask(nc, "start", T.StartTaskRequest(task=task("t-1", memory=400, seconds=5)), T.StartTaskResponse)
    assert reply.accepted
    await eventually(lambda: "t-1" in reports[-1].running_task_ids, what="a report listing the task")
    assert reports[-1].allocatable.memory_mb == 600
    assert reports[-1].allocatable.task_slots == 2


async def test_a_task_runs_and_every_change_is_reported(
    run_service: RunService, worker_settings: Settings, nc: Client
) -> None:
    seen: list[task_pb2.TaskStatusReport] = []

    async def on_task(msg: Msg) -> None:
        seen.append(T.TaskStatusReport.FromString(msg.data))

    await nc.subscribe(subjects.worker_task_report("w1"), cb=on_task)
    await run_service(SPEC, worker_settings)
    reply = await ask(nc, "start", T.StartTaskRequest(task=task("t-1")), T.StartTaskResponse)
    assert reply.accepted
    await eventually(lambda: bool(seen) and seen[-1].state == T.TASK_STATE_SUCCEEDED, what="the task's exit")
    assert [r.state for r in seen] == [T.TASK_STATE_STARTING, T.TASK_STATE_RUNNING, T.TASK_STATE_SUCCEEDED]
    assert [r.sequence for r in seen] == [1, 2, 3]
    final = seen[-1]
    assert (final.exit_reason, final.exit_code, final.runtime) == (T.TASK_EXIT_REASON_EXITED, 0, "simulated")
    assert final.usage.wall_time.ToNanoseconds() > 0
    status = await ask(nc, "status", T.TaskStatusRequest(task_id="t-1"), T.TaskStatusReport)
    assert status == final
    again = await ask(nc, "start", T.StartTaskRequest(task=task("t-1")), T.StartTaskResponse)
    assert again.accepted
    assert again.status == final  # a retried start changes nothing


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda t: t.limits.ClearField("execution_timeout"), "invalid_argument", "needs memory_mb, cpu_cores"),
        (lambda t: setattr(t.limits, "memory_mb", 0), "invalid_argument", "needs memory_mb"),
        (lambda t: setattr(t, "agent_id", ""), "invalid_argument", "needs a task_id"),
        (lambda t: setattr(t.limits, "memory_mb", 5000), "resource_exhausted", "too little free memory"),
        (lambda t: setattr(t.limits, "cpu_cores", 3), "resource_exhausted", "too little free cpu"),
        (lambda t: setattr(t, "tier", 0), "failed_precondition", "SANDBOX_TIER_UNSPECIFIED is not available"),
    ],
)
async def test_starts_that_cannot_be_honoured_are_refused(
    run_service: RunService,
    worker_settings: Settings,
    nc: Client,
    mutate: Callable[[task_pb2.Task], object],
    code: str,
    message: str,
) -> None:
    await run_service(SPEC, worker_settings)
    bad = task("t-bad")
    mutate(bad)
    reply = await ask(nc, "start", T.StartTaskRequest(task=bad), T.StartTaskResponse)
    assert not reply.accepted
    assert reply.error.code == code
    assert message in reply.error.message
    status = await ask(nc, "status", T.TaskStatusRequest(task_id="t-bad"), T.TaskStatusReport)
    assert status.state == T.TASK_STATE_UNSPECIFIED  # nothing was kept


async def test_slots_are_never_over_committed(run_service: RunService, worker_settings: Settings, nc: Client) -> None:
    await run_service(SPEC, worker_settings)
    replies = await asyncio.gather(
        *(ask(nc, "start", T.StartTaskRequest(task=task(f"t-{i}", seconds=5)), T.StartTaskResponse) for i in range(5))
    )
    assert sum(1 for r in replies if r.accepted) == 3
    assert {r.error.code for r in replies if not r.accepted} == {"resource_exhausted"}


async def test_starts_and_exits_are_counted_by_tier_and_outcome(
    run_service: RunService, worker_settings: Settings, nc: Client
) -> None:
    runner = await run_service(SPEC, worker_settings)
    registry = runner.metrics

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert (
        value("symbi_sandbox_starts_total", kind="task", tier="Tier1", outcome="started") == 0
    )  # exported from the start
    assert (await ask(nc, "start", T.StartTaskRequest(task=task("t-ok")), T.StartTaskResponse)).accepted
    too_big = task("t-big", memory=5000)
    too_big.tier = TIER2
    assert not (await ask(nc, "start", T.StartTaskRequest(task=too_big), T.StartTaskResponse)).accepted
    await eventually(
        lambda: value("symbi_sandbox_exits_total", tier="Tier1", reason="exited") == 1, what="the exit is counted"
    )
    assert value("symbi_sandbox_starts_total", kind="task", tier="Tier1", outcome="started") == 1
    assert value("symbi_sandbox_starts_total", kind="task", tier="Tier2", outcome="refused") == 1
    assert value("symbi_sandbox_start_seconds_count", kind="task", tier="Tier1") == 1
    assert value("symbi_worker_free_memory_mb") == 1000  # read at scrape time, nothing running now


async def test_stop_replies_once_the_task_is_gone(
    run_service: RunService, worker_settings: Settings, nc: Client
) -> None:
    await run_service(SPEC, worker_settings)
    await ask(nc, "start", T.StartTaskRequest(task=task("t-1", seconds=60)), T.StartTaskResponse)
    request = T.StopTaskRequest(task_id="t-1", reason=T.STOP_REASON_CANCELLED)
    reply = await ask(nc, "stop", request, T.StopTaskResponse)
    assert reply.stopped
    assert reply.status.state == T.TASK_STATE_CANCELLED
    assert reply.status.exit_reason == T.TASK_EXIT_REASON_STOPPED
    unknown = await ask(nc, "stop", T.StopTaskRequest(task_id="never"), T.StopTaskResponse)
    assert unknown.stopped  # nothing of that name runs here
    assert unknown.status.detail == "not known on this worker"

    await ask(
        nc,
        "start",
        T.StartTaskRequest(task=task("t-stuck", seconds=60, labels={"ignore_stop": "true"})),
        T.StartTaskResponse,
    )
    stuck = await ask(nc, "stop", T.StopTaskRequest(task_id="t-stuck"), T.StopTaskResponse)
    assert not stuck.stopped
    assert stuck.error.message == "the sandbox did not confirm the stop"


@pytest.mark.parametrize(
    ("labels", "reason", "detail"),
    [
        ({"memory_mb": "500"}, T.TASK_EXIT_REASON_OOM_KILLED, "killed: used 500 MiB of 100"),
        ({"seconds": "5"}, T.TASK_EXIT_REASON_TIMED_OUT, "killed after 0.2s"),
        ({"output_bytes": "2000"}, T.TASK_EXIT_REASON_OUTPUT_LIMIT, "killed: output passed 1000 bytes"),
        ({"exit_code": "2"}, T.TASK_EXIT_REASON_EXITED, "exited with 2"),
    ],
)
async def test_limits_and_failures_are_told_apart(
    run_service: RunService, worker_settings: Settings, nc: Client, labels: dict[str, str], reason: int, detail: str
) -> None:
    await run_service(SPEC, worker_settings)
    t = task("t-limit", labels=labels)
    t.limits.execution_timeout.FromMilliseconds(200)
    t.limits.max_output_bytes = 1000
    await ask(nc, "start", T.StartTaskRequest(task=t), T.StartTaskResponse)

    async def ended() -> bool:
        status = await ask(nc, "status", T.TaskStatusRequest(task_id="t-limit"), T.TaskStatusReport)
        return bool(status.state == T.TASK_STATE_FAILED)

    await eventually(ended, what="the task fails")
    status = await ask(nc, "status", T.TaskStatusRequest(task_id="t-limit"), T.TaskStatusReport)
    assert (status.exit_reason, status.detail) == (reason, detail), status


async def test_shutdown_drains_and_reports_the_tasks(
    run_service: RunService, worker_settings: Settings, nc: Client
) -> None:
    seen: list[task_pb2.TaskStatusReport] = []

    async def on_task(msg: Msg) -> None:
        seen.append(T.TaskStatusReport.FromString(msg.data))

    await nc.subscribe(subjects.worker_task_report("w1"), cb=on_task)
    runner = await run_service(SPEC, worker_settings)
    await ask(nc, "start", T.StartTaskRequest(task=task("t-1", seconds=60)), T.StartTaskResponse)
    status = await health_of(nc, "sandbox-orchestrator")
    assert "tasks are NOT executed" in components(status)["worker"].detail
    await runner.shutdown()
    await eventually(lambda: bool(seen) and seen[-1].state == T.TASK_STATE_CANCELLED, what="the drained task's report")


def test_node_names_are_subject_tokens() -> None:
    assert node_name("node-1") == "node-1"
    assert node_name("")  # the host name
    from symbi_common.errors import ConfigError

    assert node_name("ip-10-0-0-1.ec2.internal") == "ip-10-0-0-1-ec2-internal"
    with pytest.raises(ConfigError, match="gives no usable node name"):
        node_name("...")
    assert SimulatedRunner(0.1).name == "simulated"
