"""The scheduler at work: events in, decisions out, side effects carried out and persisted.

One loop makes decisions (``SchedulerCore.decide``) whenever something changed
(a submission, a capacity or task report, a release) or the housekeeping tick
passes; each placement is dispatched in its own task:

1. the lifecycle service assigns the task to its agent (READY -> RUNNING); an
   agent that is suspended gets the task held, a terminated one gets it cancelled;
2. the worker is asked to start it; a refusal puts it back in the queue (and the
   agent back to READY), and after ``max_attempts`` fails it.

Reports from workers settle tasks: a completion returns the agent to READY with
the task's usage, a resource-limit breach suspends the agent (its task held for
when it resumes), a preemption or lost worker requeues the task. Every change is
written to Redis before the request that caused it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from symbi_common import natsio, subjects
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import ConflictError, NotFoundError, SymbiError
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.supervisor import Supervisor
from symbi_proto.v1 import agent_pb2, audit_pb2, sandbox_pb2, task_pb2
from symbi_scheduler.core import Outcome, Place, Preempt, SchedulerCore, Stop
from symbi_scheduler.store import TaskStore

log = logging.getLogger(__name__)

A = agent_pb2
T = task_pb2
DECISIONS_PER_ROUND = 512
STOP_REASONS = {
    Stop.PREEMPT: T.STOP_REASON_PREEMPTED,
    Stop.HOLD: T.STOP_REASON_AGENT_STOPPED,
    Stop.CANCEL_AGENT: T.STOP_REASON_AGENT_STOPPED,
    Stop.CANCEL: T.STOP_REASON_CANCELLED,
    Stop.TIMEOUT: T.STOP_REASON_VIOLATION,
    Stop.ORPHAN: T.STOP_REASON_DRAIN,
}


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decision = Histogram(
            "symbi_scheduler_decision_seconds",
            "Time to make one scheduling decision",
            registry=registry,
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
        )
        self.placed = Counter("symbi_scheduler_placements", "Tasks placed", ["node"], registry=registry)
        self.preemptions = Counter("symbi_scheduler_preemptions", "Tasks preempted", registry=registry)
        self.finished = Counter("symbi_scheduler_tasks_finished", "Tasks ended", ["state"], registry=registry)
        self.queued = Gauge("symbi_scheduler_queued", "Tasks waiting per priority", ["priority"], registry=registry)
        self.queue_wait = Histogram(
            "symbi_scheduler_queue_wait_seconds",
            "Time a task waited in the queue before it was placed",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0),
        )
        self.worker_memory = Gauge(
            "symbi_scheduler_worker_reserved_memory_mb", "Memory reserved per worker", ["node"], registry=registry
        )
        self.worker_cpu = Gauge(
            "symbi_scheduler_worker_reserved_cpu_cores", "CPU reserved per worker", ["node"], registry=registry
        )
        self.agent_cpu = Gauge(
            "symbi_scheduler_agent_cpu_seconds", "CPU used by an agent's tasks so far", ["agent"], registry=registry
        )


class Engine:
    def __init__(
        self,
        nc: Client,
        core: SchedulerCore,
        store: TaskStore,
        lifecycle: LifecycleClient,
        metrics: SchedulerMetrics,
        *,
        start_timeout_s: float,
        stop_timeout_s: float = 30.0,
        supervisor: Supervisor,
        audit: AuditPublisher | None = None,
    ) -> None:
        self.nc = nc
        self.core = core
        self.store = store
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.tasks = supervisor
        self.audit = audit
        self.wake = asyncio.Event()
        self.paused = False
        self.agent_cpu: dict[str, float] = {}
        self._persisting = asyncio.Lock()
        self._last_housekeeping = 0.0

    def now(self) -> float:
        return time.monotonic()

    async def persist(self) -> None:
        """Write every changed task to Redis (call before answering the request that changed it).

        Serialised: a caller whose change another caller is writing returns only once that write is done.
        """
        async with self._persisting:
            await self._persist()

    async def _persist(self) -> None:
        if not self.core.dirty:
            return
        ids, self.core.dirty = self.core.dirty, set()
        statuses = [self.core.tasks[i].status for i in ids if i in self.core.tasks]
        try:
            await self.store.save(statuses)
        except SymbiError:
            self.core.dirty |= ids  # written on the next round
            raise
        for status in statuses:
            if status.state in (T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED):
                self.metrics.finished.labels(T.TaskState.Name(status.state).removeprefix("TASK_STATE_").lower()).inc()

    # The decision loop ------------------------------------------------------------------

    async def run(self, tick_s: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick_s)
            self.wake.clear()
            if self.paused:
                continue
            if self.now() - self._last_housekeeping >= tick_s:
                self._last_housekeeping = self.now()
                self.housekeeping()
            self.schedule_round()
            try:
                await self.persist()
            except SymbiError as exc:
                log.warning("scheduler: %s", exc)

    def schedule_round(self) -> int:
        made = 0
        for _ in range(DECISIONS_PER_ROUND):
            started = time.perf_counter()
            decision = self.core.decide(self.now())
            self.metrics.decision.observe(time.perf_counter() - started)
            if decision is None:
                break
            made += 1
            if isinstance(decision, Place):
                self.metrics.placed.labels(decision.node).inc()
                tracked = self.core.tasks.get(decision.task_id)
                if tracked is not None:
                    self.metrics.queue_wait.observe(max(0.0, self.now() - tracked.entry.enqueued_at))
                self.tasks.spawn(self.dispatch(decision), name=f"dispatch-{decision.task_id}")
            elif isinstance(decision, Preempt):
                self.metrics.preemptions.inc(len(decision.victims))
                log.info("preempting %s on %s for %s", ", ".join(decision.victims), decision.node, decision.task_id)
                for victim in decision.victims:
                    self.tasks.spawn(self.stop(victim, decision.node, Stop.PREEMPT), name=f"preempt-{victim}")
        return made

    def housekeeping(self) -> None:
        now = self.now()
        for priority, depth, _ in self.core.queue.stats(now):
            level = T.TaskPriority.Name(priority).removeprefix("TASK_PRIORITY_").lower()  # type: ignore[arg-type]
            self.metrics.queued.labels(level).set(depth)
        for worker in self.core.workers.values():
            self.metrics.worker_memory.labels(worker.node).set(worker.memory_used)
            self.metrics.worker_cpu.labels(worker.node).set(worker.cpu_used)
        for task_id, node in self.core.expire(now):
            log.warning("task %s ran past its execution timeout on %s: stopping it", task_id, node)
            self.tasks.spawn(self.stop(task_id, node, Stop.TIMEOUT), name=f"timeout-{task_id}")

    # Dispatch ---------------------------------------------------------------------------

    async def dispatch(self, place: Place) -> None:
        tracked = self.core.tasks[place.task_id]
        task = tracked.status.task
        if not await self._assign(task):
            await self.persist()
            self.wake.set()
            return
        request = T.StartTaskRequest(task=task, output_subject=subjects.task_output(task.task_id))
        try:
            reply = await natsio.request(
                self.nc,
                subjects.sandbox(place.node, "start"),
                request,
                T.StartTaskResponse,
                timeout=self.start_timeout_s,
            )
        except SymbiError as exc:
            reply = T.StartTaskResponse(accepted=False, error=exc.to_detail())
        if reply.accepted:
            outcome = self.core.on_report(reply.status, self.now())
            await self._settle(place.task_id, outcome, reply.status)
        else:
            why = f"worker {place.node} refused the start: {reply.error.message or reply.error.code}"
            log.warning("task %s: %s", place.task_id, why)
            outcome = self.core.dispatch_failed(place.task_id, why, self.now())
            await self._agent_done(task, why, requeued=outcome is Outcome.REQUEUED)
        await self.persist()
        self.wake.set()

    async def _assign(self, task: task_pb2.Task) -> bool:
        """READY -> RUNNING for the task's agent; False (task settled otherwise) if it cannot be."""
        try:
            await self.lifecycle.transition(
                task.agent_id, A.AGENT_STATE_RUNNING, A.TRANSITION_CAUSE_TASK_ASSIGNED, task_id=task.task_id
            )
            return True
        except (ConflictError, NotFoundError) as exc:
            return await self._not_assignable(task, exc)
        except SymbiError as exc:  # the lifecycle service is down: try again shortly
            self.core.dispatch_failed(task.task_id, f"cannot assign it to its agent: {exc.message}", self.now(),
                                      count=False)  # fmt: skip
            return False

    async def _not_assignable(self, task: task_pb2.Task, exc: SymbiError) -> bool:
        try:
            record = await self.lifecycle.get(task.agent_id)
        except NotFoundError:
            self.core.reject(task.task_id, "its agent does not exist")
            return False
        except SymbiError as err:
            self.core.dispatch_failed(task.task_id, err.message, self.now(), count=False)
            return False
        state = record.state
        if state == A.AGENT_STATE_SUSPENDED:
            self.core.dispatch_failed(task.task_id, "its agent is suspended", self.now(), count=False)
            self.core.hold_agent(task.agent_id)
        elif state in (A.AGENT_STATE_TERMINATED, A.AGENT_STATE_FAILED):
            self.core.reject(
                task.task_id, f"its agent is {A.AgentState.Name(state).removeprefix('AGENT_STATE_').lower()}"
            )
        else:
            self.core.dispatch_failed(task.task_id, f"its agent is busy: {exc.message}", self.now(), count=False)
        return False

    # Settling tasks ---------------------------------------------------------------------

    async def _settle(self, task_id: str, outcome: Outcome, report: task_pb2.TaskStatusReport) -> None:
        """What the lifecycle must hear of a task's outcome."""
        tracked = self.core.tasks.get(task_id)
        if tracked is None:
            return
        task = tracked.status.task
        if outcome in (Outcome.DONE, Outcome.LIMIT):
            await self._audit_finished(tracked.status, report)
        if outcome is Outcome.DONE:
            self._count_usage(task.agent_id, report)
            await self._agent_done(task, tracked.status.reason, usage=report.usage)
        elif outcome is Outcome.LIMIT:
            self._count_usage(task.agent_id, report)
            try:
                await self.lifecycle.transition(
                    task.agent_id,
                    A.AGENT_STATE_SUSPENDED,
                    A.TRANSITION_CAUSE_RESOURCE_LIMIT,
                    reason=f"task {task_id}: {report.detail}",
                    task_id=task_id,
                    usage=report.usage,
                )
            except SymbiError as exc:
                log.warning("cannot suspend agent %s after a limit breach: %s", task.agent_id, exc.message)
        if outcome is not Outcome.NOTHING:
            self.wake.set()

    async def _audit_finished(self, status: task_pb2.TaskStatus, report: task_pb2.TaskStatusReport) -> None:
        """``task.finished``: how the task ended, where and in what sandbox, linked to its admission."""
        if self.audit is None:
            return
        task = status.task
        details = {
            "task_id": task.task_id,
            "state": T.TaskState.Name(report.state).removeprefix("TASK_STATE_").lower(),
            "exit_reason": T.TaskExitReason.Name(report.exit_reason).removeprefix("TASK_EXIT_REASON_").lower(),
            "exit_code": report.exit_code if report.HasField("exit_code") else None,
            "detail": report.detail[:500],
            "node": report.node,
            "runtime": report.runtime,
            "tier": sandbox_pb2.SandboxTier.Name(report.tier).removeprefix("SANDBOX_TIER_").lower(),
            "sandbox_id": report.sandbox_id,
            "cpu_seconds": report.usage.cpu_seconds,
            "output_bytes": report.output_bytes,
            "decision_id": task.decision_id,
        }
        ok = report.state == T.TASK_STATE_SUCCEEDED
        try:
            await self.audit.record(
                "task.finished",
                agent_id=task.agent_id,
                tenant=task.tenant,
                correlation_id=task.task_id,
                details=details,
                outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS if ok else audit_pb2.AUDIT_OUTCOME_FAILURE,
            )
        except SymbiError as exc:
            log.error("task.finished of %s not audited: %s", task.task_id, exc.message)

    async def _agent_done(
        self, task: task_pb2.Task, reason: str, *, usage: object = None, requeued: bool = False
    ) -> None:
        """RUNNING -> READY for the task's agent (a task that will run again is re-assigned then)."""
        detail = f"{reason}; queued again" if requeued else reason
        try:
            await self.lifecycle.transition(
                task.agent_id,
                A.AGENT_STATE_READY,
                A.TRANSITION_CAUSE_TASK_COMPLETED,
                reason=detail[:500],
                task_id=task.task_id,
                usage=usage,
            )
        except ConflictError:
            pass  # the agent moved on (suspended, terminated): nothing to complete
        except SymbiError as exc:
            log.warning("cannot return agent %s to ready: %s", task.agent_id, exc.message)

    def _count_usage(self, agent_id: str, report: task_pb2.TaskStatusReport) -> None:
        total = self.agent_cpu.get(agent_id, 0.0) + report.usage.cpu_seconds
        self.agent_cpu[agent_id] = total
        self.metrics.agent_cpu.labels(agent_id).set(total)

    # Stops ------------------------------------------------------------------------------

    async def stop(self, task_id: str, node: str, why: Stop, grace_s: float = 10.0) -> tuple[bool, str]:
        """Ask the worker to stop a task and settle it from the final status; (confirmed, detail)."""
        request = T.StopTaskRequest(task_id=task_id, reason=STOP_REASONS[why], detail=why.value)
        request.grace_period.FromNanoseconds(int(grace_s * 1e9))
        try:
            reply = await natsio.request(
                self.nc, subjects.sandbox(node, "stop"), request, T.StopTaskResponse, timeout=self.stop_timeout_s
            )
        except SymbiError as exc:
            return False, f"worker {node} did not answer the stop: {exc.message}"
        if not reply.stopped:
            return False, f"worker {node}: {reply.error.message or 'the stop was not confirmed'}"
        if reply.status.state == T.TASK_STATE_UNSPECIFIED:  # the worker does not know it: nothing runs there
            self.core.lost(task_id, f"worker {node} does not know the task", self.now())
        else:
            outcome = self.core.on_report(reply.status, self.now())
            await self._settle(task_id, outcome, reply.status)
        await self.persist()
        return True, ""

    async def stop_all(self, targets: Iterable[tuple[str, str]], why: Stop, grace_s: float) -> tuple[bool, str]:
        results = await asyncio.gather(*(self.stop(t, n, why, grace_s) for t, n in targets))
        problems = [detail for ok, detail in results if not ok]
        return not problems, "; ".join(problems)

    # Reports ----------------------------------------------------------------------------

    async def on_task_report(self, msg: Msg) -> None:
        try:
            report = T.TaskStatusReport.FromString(msg.data)
        except DecodeError:
            log.warning("dropping an unreadable task report on %s", msg.subject)
            return
        if self.paused:
            return
        outcome = self.core.on_report(report, self.now())
        await self._settle(report.task_id, outcome, report)
        await self.persist()

    async def on_capacity(self, msg: Msg) -> None:
        try:
            report = T.WorkerCapacity.FromString(msg.data)
            subjects.token(report.node)
        except (DecodeError, SymbiError):
            log.warning("dropping an unreadable capacity report on %s", msg.subject)
            return
        if self.paused or msg.subject != subjects.worker_capacity(report.node):
            return  # a worker may only speak for itself
        orphans, missing = self.core.on_capacity(report, self.now())
        for task_id in orphans:
            log.warning("task %s runs on %s but is placed elsewhere: stopping it there", task_id, report.node)
            self.tasks.spawn(self._stop_orphan(task_id, report.node), name=f"orphan-{task_id}")
        for task_id in missing:
            self.tasks.spawn(self._ask_status(task_id, report.node), name=f"status-{task_id}")
        self.wake.set()

    async def _stop_orphan(self, task_id: str, node: str) -> None:
        request = T.StopTaskRequest(task_id=task_id, reason=T.STOP_REASON_DRAIN, detail=Stop.ORPHAN.value)
        try:
            await natsio.request(self.nc, subjects.sandbox(node, "stop"), request, T.StopTaskResponse, timeout=30)
        except SymbiError as exc:
            log.warning("cannot stop orphan %s on %s: %s", task_id, node, exc.message)

    async def _ask_status(self, task_id: str, node: str) -> None:
        try:
            report = await natsio.request(
                self.nc, subjects.sandbox(node, "status"), T.TaskStatusRequest(task_id=task_id), T.TaskStatusReport,
                timeout=5,
            )  # fmt: skip
        except SymbiError:
            return  # silent worker: the lost-worker rule settles it
        if report.state == T.TASK_STATE_UNSPECIFIED:
            self.core.lost(task_id, f"worker {node} does not know the task", self.now())
        else:
            outcome = self.core.on_report(report, self.now())
            await self._settle(task_id, outcome, report)
        await self.persist()
        self.wake.set()
