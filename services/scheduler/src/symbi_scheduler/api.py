"""The scheduler's requests on ``symbi.scheduler.*``.

``schedule`` (schedule_agent: the agent by id, or created from a definition first),
``get_task``, ``list_tasks``, ``cancel_task``, ``status`` (get_system_status) and
``agent_tasks`` (the lifecycle service's hold / release / cancel of an agent's tasks).
"""

from __future__ import annotations

import logging
import time

from google.protobuf.message import Message

from symbi_common import natsio, subjects
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, SymbiError, UnavailableError
from symbi_common.ids import parse_id
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.service import ServiceContext
from symbi_proto.v1 import agent_pb2, sandbox_pb2, scheduler_pb2, task_pb2
from symbi_scheduler.admission import Decider, admit
from symbi_scheduler.core import FINAL, Stop
from symbi_scheduler.engine import Engine
from symbi_scheduler.placement import STRATEGIES
from symbi_scheduler.queues import LEVELS

log = logging.getLogger(__name__)

A = agent_pb2
T = task_pb2
MAX_PAGE = 1000
SCHEDULABLE = frozenset({A.AGENT_STATE_READY, A.AGENT_STATE_RUNNING, A.AGENT_STATE_SUSPENDED})
STRATEGY_ENUM = {
    "first_fit": scheduler_pb2.PLACEMENT_STRATEGY_FIRST_FIT,
    "best_fit": scheduler_pb2.PLACEMENT_STRATEGY_BEST_FIT,
    "priority": scheduler_pb2.PLACEMENT_STRATEGY_PRIORITY,
}
assert set(STRATEGY_ENUM) == set(STRATEGIES)


class SchedulerApi:
    def __init__(
        self,
        engine: Engine,
        lifecycle: LifecycleClient,
        policy: Decider,
        audit: AuditPublisher,
        *,
        default_tier: str,
        max_queued: int,
        grace_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.core = engine.core
        self.lifecycle = lifecycle
        self.policy = policy
        self.audit = audit
        self.default_tier = default_tier
        self.max_queued = max_queued
        self.grace_s = grace_s

    async def register(self, ctx: ServiceContext) -> None:
        routes = [
            ("schedule", scheduler_pb2.ScheduleAgentRequest, self.schedule),
            ("get_task", scheduler_pb2.GetTaskRequest, self.get_task),
            ("list_tasks", scheduler_pb2.ListTasksRequest, self.list_tasks),
            ("cancel_task", scheduler_pb2.CancelTaskRequest, self.cancel_task),
            ("status", scheduler_pb2.GetSystemStatusRequest, self.system_status),
            ("agent_tasks", scheduler_pb2.AgentTasksRequest, self.agent_tasks),
        ]
        for operation, request_type, handler in routes:
            await ctx.serve(subjects.scheduler(operation), request_type, handler, concurrent=True)  # type: ignore[arg-type]

    def _ready(self) -> None:
        if self.engine.paused:
            raise UnavailableError("this scheduler replica lost its lease; another one schedules now")

    # schedule_agent -------------------------------------------------------------------

    async def schedule(self, req: scheduler_pb2.ScheduleAgentRequest, _: natsio.RequestMeta) -> Message:
        self._ready()
        if req.priority and req.priority not in LEVELS:
            raise InvalidArgumentError(f"unknown priority {req.priority}")
        if self.core.queue.waiting >= self.max_queued:
            raise UnavailableError(f"the scheduler queue is full ({self.max_queued} tasks); try again later")
        record = await self._agent(req)
        if record.state not in SCHEDULABLE:
            state = A.AgentState.Name(record.state).removeprefix("AGENT_STATE_").lower()
            raise FailedPreconditionError(f"agent {record.agent_id} is {state}: it cannot be given tasks")
        task = await admit(req, record, self.policy, default_tier=self.default_tier)
        if req.idempotency_key:
            earlier = await self.engine.store.claim_idempotency(req.idempotency_key, task.task_id)
            if earlier is not None:
                return self._scheduled(await self._status(earlier))
        await self.audit.record(
            "task.admitted",
            agent_id=record.agent_id,
            tenant=task.tenant,
            correlation_id=task.task_id,
            details={
                "task_id": task.task_id,
                "priority": T.TaskPriority.Name(task.priority).removeprefix("TASK_PRIORITY_").lower(),
                "tier": sandbox_pb2.SandboxTier.Name(task.tier).removeprefix("SANDBOX_TIER_").lower(),
                "risk_score": task.risk.score,
                "risk_reason": task.risk.reason,
                "memory_mb": int(task.limits.memory_mb),
                "cpu_cores": float(task.limits.cpu_cores),
                "execution_timeout_s": task.limits.execution_timeout.ToNanoseconds() / 1e9,
                "network": task.network_access,
                "decision_id": task.decision_id,
            },
        )  # no audit record, no task: an error here refuses the request
        status = self.core.submit(task, self.engine.now())
        if record.state == A.AGENT_STATE_SUSPENDED:
            self.core.hold_agent(record.agent_id)
        await self.engine.persist()
        self.engine.wake.set()
        return self._scheduled(status)

    async def _agent(self, req: scheduler_pb2.ScheduleAgentRequest) -> agent_pb2.AgentRecord:
        which = req.WhichOneof("agent")
        if which == "agent_id":
            return await self.lifecycle.get(parse_id(req.agent_id, what="agent_id"))
        if which == "definition":
            created = await self.lifecycle.create(
                agent_pb2.CreateAgentRequest(definition=req.definition, requested_by=req.requested_by)
            )
            if not created.HasField("agent"):
                problems = "; ".join(f"{i.location.line}:{i.location.column} {i.message}" for i in created.issues)
                raise InvalidArgumentError(f"the agent definition is not valid: {problems}")
            return created.agent
        raise InvalidArgumentError("schedule_agent needs an agent_id or a definition")

    def _scheduled(self, status: task_pb2.TaskStatus) -> scheduler_pb2.ScheduleAgentResponse:
        return scheduler_pb2.ScheduleAgentResponse(
            agent_id=status.task.agent_id,
            task_id=status.task.task_id,
            state=status.state,
            queue_position=status.queue_position,
        )

    async def _status(self, task_id: str) -> task_pb2.TaskStatus:
        try:
            return self.core.status(task_id, self.engine.now())
        except SymbiError:
            stored = await self.engine.store.get(task_id)
            if stored is None:
                raise
            return stored

    # Queries ---------------------------------------------------------------------------

    async def get_task(self, req: scheduler_pb2.GetTaskRequest, _: natsio.RequestMeta) -> Message:
        return scheduler_pb2.GetTaskResponse(task=await self._status(req.task_id))

    async def list_tasks(self, req: scheduler_pb2.ListTasksRequest, _: natsio.RequestMeta) -> Message:
        states = set(req.states)
        rows = sorted(
            (t.status for t in self.core.tasks.values()),
            key=lambda s: s.task.task_id,
        )
        rows = [
            s for s in rows
            if (not req.agent_id or s.task.agent_id == req.agent_id) and (not states or s.state in states)
            and (not req.tenant or s.task.tenant == req.tenant)
        ]  # fmt: skip
        after = req.page.page_token
        if after:
            rows = [s for s in rows if s.task.task_id > after]
        size = min(req.page.page_size or 100, MAX_PAGE)
        page = rows[:size]
        response = scheduler_pb2.ListTasksResponse(tasks=page)
        response.page.total_size = len(rows)
        if len(rows) > size:
            response.page.next_page_token = page[-1].task.task_id
        return response

    async def cancel_task(self, req: scheduler_pb2.CancelTaskRequest, _: natsio.RequestMeta) -> Message:
        self._ready()
        target = self.core.cancel(req.task_id, req.reason or f"cancelled by {req.requested_by or 'a caller'}")
        if target is not None:
            confirmed, detail = await self.engine.stop(target[0], target[1], Stop.CANCEL, self.grace_s)
            if not confirmed:
                raise UnavailableError(f"task {req.task_id} may still run: {detail}")
        await self.engine.persist()
        return scheduler_pb2.CancelTaskResponse(task=self.core.status(req.task_id, self.engine.now()))

    async def system_status(self, _: scheduler_pb2.GetSystemStatusRequest, __: natsio.RequestMeta) -> Message:
        now = self.engine.now()
        core = self.core
        out = scheduler_pb2.SystemStatus(strategy=STRATEGY_ENUM[core.options.strategy])
        for priority, depth, age in core.queue.stats(now):
            out.queues.add(priority=priority, depth=depth, oldest_age_seconds=round(age, 3))
        wall = time.time()
        for worker in sorted(core.workers.values(), key=lambda w: w.node):
            status = out.workers.add(running_tasks=len(worker.placed), lost=worker.lost)
            if worker.report is not None:
                status.capacity.CopyFrom(worker.report)
            status.reserved.memory_mb = max(0, worker.memory_used)
            status.reserved.cpu_cores = max(0.0, worker.cpu_used)
            status.reserved.task_slots = len(worker.placed)
            if worker.last_report:
                status.last_report.FromNanoseconds(int((wall - (now - worker.last_report)) * 1e9))
            if not worker.lost:
                out.total.memory_mb += worker.total.memory_mb
                out.total.cpu_cores += worker.total.cpu_cores
                out.total.task_slots += worker.slots
        memory, cpu, running = core.allocated()
        out.allocated.memory_mb, out.allocated.cpu_cores, out.allocated.task_slots = memory, cpu, running
        out.running_tasks = len(core.running)
        try:
            counts = await self.lifecycle.counts()
            out.agents.extend(counts.counts)
        except SymbiError as exc:  # status still answers without the lifecycle service
            log.debug("no agent counts: %s", exc.message)
        out.time.GetCurrentTime()
        return out

    # The lifecycle's requests ----------------------------------------------------------

    async def agent_tasks(self, req: scheduler_pb2.AgentTasksRequest, _: natsio.RequestMeta) -> Message:
        self._ready()
        agent_id = parse_id(req.agent_id, what="agent_id")
        grace = req.grace_period.ToNanoseconds() / 1e9 if req.HasField("grace_period") else self.grace_s
        confirmed, detail = True, ""
        if req.action == scheduler_pb2.AGENT_TASKS_ACTION_HOLD:
            targets = self.core.hold_agent(agent_id)
            await self.engine.persist()
            confirmed, detail = await self.engine.stop_all(targets, Stop.HOLD, grace)
        elif req.action == scheduler_pb2.AGENT_TASKS_ACTION_RELEASE:
            self.core.release_agent(agent_id)
            if not any(s.state not in FINAL for s in self.core.tasks_of(agent_id)):
                self.engine.tasks.spawn(self._complete_idle(agent_id), name=f"complete-{agent_id}")
        elif req.action == scheduler_pb2.AGENT_TASKS_ACTION_CANCEL:
            targets = self.core.cancel_agent(agent_id, req.reason or "its agent was terminated")
            await self.engine.persist()
            confirmed, detail = await self.engine.stop_all(targets, Stop.CANCEL_AGENT, grace)
        else:
            raise InvalidArgumentError("agent_tasks needs an action (hold, release or cancel)")
        await self.engine.persist()
        self.engine.wake.set()
        return scheduler_pb2.AgentTasksResponse(stopped=confirmed, detail=detail, tasks=self.core.tasks_of(agent_id))

    async def _complete_idle(self, agent_id: str) -> None:
        """A resumed agent whose task already ended (it failed for good while suspended) returns to READY."""
        try:
            record = await self.lifecycle.get(agent_id)
            if record.state == A.AGENT_STATE_RUNNING and record.current_task_id:
                await self.lifecycle.transition(
                    agent_id,
                    A.AGENT_STATE_READY,
                    A.TRANSITION_CAUSE_TASK_COMPLETED,
                    reason="its task had already ended",
                    task_id=record.current_task_id,
                )
        except SymbiError as exc:
            log.warning("cannot complete resumed agent %s: %s", agent_id, exc.message)
