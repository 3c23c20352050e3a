"""The worker side of the scheduler contract: capacity reports, start, stop, status, exits.

One worker per node. It answers ``symbi.sandbox.<node>.start|stop|status`` (queue
group ``<node>``, so a duplicate instance never doubles a start), publishes a
``WorkerCapacity`` on ``symbi.worker.<node>.capacity`` every report interval and
after each change, and a ``TaskStatusReport`` on ``symbi.worker.<node>.task`` for
every change of a task. Start is refused (never queued) when a limit is missing,
the tier is unavailable or the free capacity is too small, so the worker itself
never over-commits whatever the scheduler believes. ``stop`` replies only once the
runner confirms the task's processes are gone, or with ``stopped=false``.

Exit mapping: exited 0 -> SUCCEEDED; exited non-zero, OOM, timeout, output limit,
start failure -> FAILED; stopped on request -> CANCELLED (with exit reason STOPPED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_common import natsio, subjects, telemetry
from symbi_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SymbiError,
)
from symbi_common.settings import SandboxSettings
from symbi_common.supervisor import Supervisor
from symbi_proto.v1 import common_pb2, sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.metrics import SandboxMetrics
from symbi_sandbox_orchestrator.runners import Execution, Exit, OutputSink, Runner

log = logging.getLogger(__name__)

T = task_pb2
FINAL = frozenset({T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED, T.TASK_STATE_REJECTED})
MAX_ID = 128
SUBJECT = re.compile(r"(?:[A-Za-z0-9_$-]+(?:\.[A-Za-z0-9_$-]+)*)?")


@dataclass
class Slot:
    task: task_pb2.Task
    report: task_pb2.TaskStatusReport
    execution: Execution | None = None
    waiter: asyncio.Task[None] | None = None
    finished_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


def host_capacity(settings: SandboxSettings) -> task_pb2.ResourceCapacity:
    memory = settings.memory_mb
    if not memory:
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
    cpus = settings.cpu_cores or float(os.cpu_count() or 1)
    return task_pb2.ResourceCapacity(
        memory_mb=memory,
        cpu_cores=cpus,
        disk_io_mbps=settings.disk_io_mbps,
        network_io_mbps=settings.network_io_mbps,
        task_slots=settings.task_slots,
    )


class Worker:
    def __init__(
        self,
        nc: Client,
        node: str,
        runner: Runner,
        settings: SandboxSettings,
        instance_id: str,
        *,
        on_error: Callable[[str, str], None] = lambda what, why: None,
        metrics: SandboxMetrics | None = None,
    ) -> None:
        self.nc = nc
        self.metrics = metrics or SandboxMetrics(None)
        self.node = subjects.token(node)
        self.runner = runner
        self.settings = settings
        self.instance_id = instance_id
        self.on_error = on_error
        self.total = host_capacity(settings)
        self.slots: dict[str, Slot] = {}
        self.reservations: Callable[[], list[common_pb2.ResourceLimits]] = list
        """Limits of what else runs here (sandbox sessions), counted against the capacity offered."""
        self.draining = False
        self._sequence = 0
        self._changed = asyncio.Event()
        self._outputs = Supervisor(on_failure=lambda name, exc: log.warning("%s: %r", name, exc))

    # Capacity -------------------------------------------------------------------------

    def running(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.report.state not in FINAL]

    def allocatable(self) -> task_pb2.ResourceCapacity:
        free = task_pb2.ResourceCapacity()
        free.CopyFrom(self.total)
        for limits in [slot.task.limits for slot in self.running()] + self.reservations():
            free.memory_mb -= min(free.memory_mb, limits.memory_mb)
            free.cpu_cores = max(0.0, round(free.cpu_cores - limits.cpu_cores, 6))
            free.disk_io_mbps -= min(free.disk_io_mbps, limits.disk_io_mbps)
            free.network_io_mbps -= min(free.network_io_mbps, limits.network_io_mbps)
            free.task_slots -= min(free.task_slots, 1)
        return free

    def capacity(self) -> task_pb2.WorkerCapacity:
        self._sequence += 1
        report = task_pb2.WorkerCapacity(
            node=self.node,
            instance_id=self.instance_id,
            backend=sandbox_pb2.SANDBOX_BACKEND_DOCKER,
            tiers=self.runner.tiers(),
            total=self.total,
            allocatable=self.allocatable(),
            running_task_ids=sorted(s.task.task_id for s in self.running()),
            draining=self.draining,
            sequence=self._sequence,
            labels=self.settings.labels,
            warm_pools=self.runner.warm_pools(),
        )
        report.time.GetCurrentTime()
        report.report_interval.FromNanoseconds(int(self.settings.report_interval_s * 1e9))
        return report

    def changed(self) -> None:
        """Report capacity now rather than at the next interval."""
        self._changed.set()

    async def publish_capacity(self) -> None:
        report = self.capacity()
        await self.nc.publish(subjects.worker_capacity(self.node), report.SerializeToString())

    async def report_capacity(self) -> None:
        """Every report interval, and at once after a change."""
        while True:
            try:
                await self.publish_capacity()
            except Exception as exc:  # NATS reconnecting: the next round reports again
                log.warning("cannot publish capacity: %r", exc)
            self._changed.clear()
            self._forget_old()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.report_interval_s)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - self.settings.finished_retention_s
        for task_id in [t for t, s in self.slots.items() if s.finished_at and s.finished_at < horizon]:
            del self.slots[task_id]

    # Requests -------------------------------------------------------------------------

    async def register(self, serve: Callable[..., object]) -> None:
        for operation, request_type, handler in (
            ("start", task_pb2.StartTaskRequest, self.start),
            ("stop", task_pb2.StopTaskRequest, self.stop),
            ("status", task_pb2.TaskStatusRequest, self.status),
        ):
            await serve(subjects.sandbox(self.node, operation), request_type, handler, queue=self.node)  # type: ignore[misc]

    async def start(self, req: task_pb2.StartTaskRequest, _: natsio.RequestMeta) -> Message:
        task = req.task
        known = self.slots.get(task.task_id)
        if known is not None and known.task.attempt == task.attempt:
            return task_pb2.StartTaskResponse(accepted=True, status=known.report)  # a retried start
        try:
            self._admit(task, known, req.output_subject)
        except SymbiError as exc:
            self.metrics.refused("task", task.tier)
            return task_pb2.StartTaskResponse(accepted=False, error=exc.to_detail())
        started = time.monotonic()
        slot = Slot(task, self._new_report(task))
        self.slots[task.task_id] = slot
        await self._set(slot, T.TASK_STATE_STARTING, "creating the sandbox")
        try:
            slot.execution = await self.runner.start(task, self._output_sink(req.output_subject, task.task_id))
        except SymbiError as exc:
            self.metrics.failed("task", task.tier)
            await self._finish(slot, Exit(T.TASK_EXIT_REASON_START_FAILED, None, exc.message))
            return task_pb2.StartTaskResponse(accepted=False, error=exc.to_detail(), status=slot.report)
        self.metrics.started("task", task.tier, time.monotonic() - started)
        slot.report.sandbox_id = slot.execution.sandbox_id
        slot.report.runtime = slot.execution.runtime
        slot.report.started_at.GetCurrentTime()
        await self._set(
            slot, T.TASK_STATE_RUNNING, "running (warm)" if getattr(slot.execution, "warm", False) else "running"
        )
        slot.waiter = asyncio.create_task(self._watch(slot), name=f"task-{task.task_id}")
        return task_pb2.StartTaskResponse(accepted=True, status=slot.report)

    def _output_sink(self, subject: str, task_id: str) -> OutputSink | None:
        if not subject:
            return None

        def forward(stream: int, offset: int, data: bytes, eof: bool) -> None:
            chunk = task_pb2.TaskOutput(task_id=task_id, stream=stream, offset=offset, data=data, eof=eof)  # type: ignore[arg-type]
            chunk.time.GetCurrentTime()
            self._outputs.spawn(self.nc.publish(subject, chunk.SerializeToString()), name=f"output-{task_id}")

        return forward

    def _admit(self, task: task_pb2.Task, known: Slot | None, output_subject: str) -> None:
        if not task.task_id or len(task.task_id) > MAX_ID or not task.agent_id:
            raise InvalidArgumentError("a task needs a task_id (at most 128 characters) and an agent_id")
        if not SUBJECT.fullmatch(output_subject):
            raise InvalidArgumentError(f"output_subject {output_subject!r} is not a subject one can publish on")
        if known is not None and known.report.state not in FINAL:
            raise FailedPreconditionError(f"task {task.task_id} already runs here (attempt {known.task.attempt})")
        if self.draining:
            raise FailedPreconditionError(f"worker {self.node} is draining")
        limits = task.limits
        if not limits.memory_mb or not limits.cpu_cores or not limits.HasField("execution_timeout"):
            raise InvalidArgumentError("a task needs memory_mb, cpu_cores and execution_timeout limits")
        tiers = {t.tier: t for t in self.runner.tiers()}
        tier = tiers.get(task.tier)
        if tier is None or not tier.available:
            why = f": {tier.reason}" if tier is not None and tier.reason else ""
            raise FailedPreconditionError(f"{sandbox_pb2.SandboxTier.Name(task.tier)} is not available here{why}")
        free = self.allocatable()
        short = [
            what
            for what, need, have in (
                ("memory", limits.memory_mb, free.memory_mb),
                ("cpu", limits.cpu_cores, free.cpu_cores),
                ("disk I/O", limits.disk_io_mbps, free.disk_io_mbps),
                ("network I/O", limits.network_io_mbps, free.network_io_mbps),
                ("task slots", 1, free.task_slots),
            )
            if need > have + 1e-9
        ]
        if short:
            raise ResourceExhaustedError(f"worker {self.node} has too little free {', '.join(short)} for the task")

    async def stop(self, req: task_pb2.StopTaskRequest, _: natsio.RequestMeta) -> Message:
        slot = self.slots.get(req.task_id)
        if slot is None:
            unknown = task_pb2.TaskStatusReport(task_id=req.task_id, node=self.node, detail="not known on this worker")
            return task_pb2.StopTaskResponse(stopped=True, status=unknown)
        if slot.report.state in FINAL:
            return task_pb2.StopTaskResponse(stopped=True, status=slot.report)
        grace = req.grace_period.ToNanoseconds() / 1e9 if req.HasField("grace_period") else 10.0
        assert slot.execution is not None
        why = task_pb2.StopReason.Name(req.reason).removeprefix("STOP_REASON_").lower()
        log.info("stopping task %s (%s%s)", req.task_id, why, f": {req.detail}" if req.detail else "")
        if not await slot.execution.stop(grace):
            error = common_pb2.ErrorDetail(code="unavailable", message="the sandbox did not confirm the stop")
            return task_pb2.StopTaskResponse(stopped=False, status=slot.report, error=error)
        await slot.done.wait()
        return task_pb2.StopTaskResponse(stopped=True, status=slot.report)

    async def status(self, req: task_pb2.TaskStatusRequest, _: natsio.RequestMeta) -> Message:
        slot = self.slots.get(req.task_id)
        if slot is None:
            return task_pb2.TaskStatusReport(task_id=req.task_id, node=self.node, detail="not known on this worker")
        if slot.execution is not None and slot.report.state not in FINAL:
            slot.report.usage.CopyFrom(slot.execution.usage())
        return slot.report

    async def drain(self, grace_s: float) -> None:
        """Accept nothing new and stop what runs (each task is reported, so it is rescheduled)."""
        self.draining = True
        self._changed.set()
        for slot in self.running():
            if slot.execution is not None:
                await slot.execution.stop(grace_s)
        waiters = [s.waiter for s in self.slots.values() if s.waiter is not None and not s.waiter.done()]
        if waiters:
            await asyncio.wait(waiters, timeout=grace_s + 1)
        await self.publish_capacity()

    # Task life ------------------------------------------------------------------------

    def _new_report(self, task: task_pb2.Task) -> task_pb2.TaskStatusReport:
        return task_pb2.TaskStatusReport(task_id=task.task_id, agent_id=task.agent_id, node=self.node, tier=task.tier)

    async def _watch(self, slot: Slot) -> None:
        assert slot.execution is not None
        try:
            outcome = await slot.execution.wait()
        except Exception as exc:  # the runner lost track of it: report, never leave it "running"
            log.exception("task %s: the runner failed", slot.task.task_id)
            self.on_error(f"task {slot.task.task_id}", repr(exc))
            outcome = Exit(T.TASK_EXIT_REASON_LOST, None, f"the runner failed: {exc!r}")
        await self._finish(slot, outcome)

    async def _finish(self, slot: Slot, outcome: Exit) -> None:
        report = slot.report
        report.exit_reason = outcome.reason
        if outcome.exit_code is not None:
            report.exit_code = outcome.exit_code
        report.usage.CopyFrom(outcome.usage)
        report.output_bytes = outcome.output_bytes
        report.output_truncated = outcome.output_truncated
        report.finished_at.GetCurrentTime()
        if outcome.reason == T.TASK_EXIT_REASON_STOPPED:
            state = T.TASK_STATE_CANCELLED
        elif outcome.reason == T.TASK_EXIT_REASON_EXITED and outcome.exit_code == 0:
            state = T.TASK_STATE_SUCCEEDED
        else:
            state = T.TASK_STATE_FAILED
        slot.finished_at = time.monotonic()
        self.metrics.exited(slot.task.tier, outcome.reason)
        await self._set(slot, state, outcome.detail)
        slot.done.set()

    async def _set(self, slot: Slot, state: int, detail: str) -> None:
        report = slot.report
        report.state = state  # type: ignore[assignment]
        report.detail = detail
        report.sequence += 1
        report.time.GetCurrentTime()
        self._changed.set()
        try:
            await self.nc.publish(
                subjects.worker_task_report(self.node), report.SerializeToString(), headers=telemetry.inject()
            )
        except Exception as exc:  # the scheduler also asks for the status of tasks it has not heard of
            log.warning("cannot publish the status of task %s: %r", report.task_id, exc)
