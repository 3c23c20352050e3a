"""Working memory ends with its task: the events that say so, and a sweep for missed ones.

How a task's end is announced (nothing here asks the worker or trusts one event alone):

- every worker publishes a ``TaskStatusReport`` on ``symbi.worker.<node>.task``; a
  terminal state there means the process ended, but the scheduler may still run the
  task again (preemption, a hold, a retry);
- the scheduler then settles the task and, when it is done, returns the agent to
  READY with cause ``TASK_COMPLETED`` and the task id: a ``StateTransition`` on
  ``symbi.agent.<id>.state``; an agent that is terminated loses all its working memory.

On either event for a task that has working memory, the scheduler is asked for the
task's state (``symbi.scheduler.get_task``): a final state, or a task the scheduler
does not know, clears the memory; a task that is queued or running again keeps it.
Core NATS events can be missed (this service restarting), so at start and every
``SWEEP_INTERVAL_S`` the same check runs for every task that still has working memory.
Subscriptions use the queue group ``context``: one replica handles each event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter

from symbi_common import subjects
from symbi_common.errors import NotFoundError, SymbiError
from symbi_common.scheduler_client import SchedulerClient
from symbi_context import filters
from symbi_context.stores import WORKING_TASKS, Stores
from symbi_proto.v1 import agent_pb2, context_pb2, task_pb2

log = logging.getLogger(__name__)

QUEUE = "context"
SWEEP_INTERVAL_S = 30.0
FINAL = frozenset(
    {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED,
     task_pb2.TASK_STATE_REJECTED}
)  # fmt: skip


class WorkingMemoryJanitor:
    def __init__(self, stores: Stores, scheduler: SchedulerClient, metrics: CollectorRegistry | None) -> None:
        self.stores = stores
        self.scheduler = scheduler
        self.cleared = Counter(
            "symbi_context_working_cleared", "Working-memory items cleared, by cause", ["cause"], registry=metrics
        )

    async def on_task_report(self, msg: Msg) -> None:
        try:
            report = task_pb2.TaskStatusReport.FromString(msg.data)
        except DecodeError:
            log.warning("dropping an unreadable task report on %s", msg.subject)
            return
        if report.state in FINAL and report.task_id:
            await self.settle(report.task_id, "task_report")

    async def on_transition(self, msg: Msg) -> None:
        try:
            transition = agent_pb2.StateTransition.FromString(msg.data)
        except DecodeError:
            log.warning("dropping an unreadable state transition on %s", msg.subject)
            return
        if transition.to_state == agent_pb2.AGENT_STATE_TERMINATED and transition.agent_id:
            await self.clear_agent(transition.agent_id)
        elif transition.cause == agent_pb2.TRANSITION_CAUSE_TASK_COMPLETED and transition.task_id:
            await self.settle(transition.task_id, "task_completed")

    async def settle(self, task_id: str, cause: str) -> bool:
        """Clear the task's working memory if the scheduler says it is over; True if cleared."""
        try:
            if not await self.stores.redis.hexists(WORKING_TASKS, task_id):
                return False
            try:
                status = await self.scheduler.get_task(task_id)
                over = status.state in FINAL
            except NotFoundError:
                over = True
            if over:
                await self.clear_task(task_id, cause)
            return over
        except SymbiError as exc:  # the scheduler or a store is unavailable: the sweep tries again
            log.warning("cannot settle working memory of task %s yet: %s", task_id, exc)
            return False
        except Exception as exc:  # a Redis error, say: same
            log.warning("cannot settle working memory of task %s yet: %r", task_id, exc)
            return False

    async def clear_task(self, task_id: str, cause: str) -> int:
        flt = filters.to_qdrant(context_pb2.ContextFilter(task_id=task_id))
        assert flt is not None
        deleted = await self.stores.vectors.delete_matching("working", flt)
        await self.stores.forget_task(task_id)
        self.cleared.labels(cause).inc(deleted)
        log.info("cleared %d working-memory items of task %s (%s)", deleted, task_id, cause)
        return deleted

    async def clear_agent(self, agent_id: str) -> int:
        try:
            flt = filters.to_qdrant(None, agent_id=agent_id)
            assert flt is not None
            deleted = await self.stores.vectors.delete_matching("working", flt)
            tasks = await self.stores.tasks_with_memory()
            for task_id in [t for t, owner in tasks.items() if owner == agent_id]:
                await self.stores.forget_task(task_id)
        except Exception as exc:
            log.warning("cannot clear the working memory of terminated agent %s: %r", agent_id, exc)
            return 0
        self.cleared.labels("agent_terminated").inc(deleted)
        log.info("cleared %d working-memory items of terminated agent %s", deleted, agent_id)
        return deleted

    async def sweep(self) -> int:
        """Settle every task that still has working memory; returns how many were cleared."""
        cleared = 0
        for task_id in await self.stores.tasks_with_memory():
            cleared += await self.settle(task_id, "sweep")
        return cleared

    async def run_sweeps(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweep now (catching up on what ended while no replica listened), then every ``interval_s``."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # Redis down: next round
                log.warning("working-memory sweep failed: %r", exc)
            await asyncio.sleep(interval_s)


def subscriptions(janitor: WorkingMemoryJanitor) -> list[tuple[str, Callable[[Msg], Awaitable[None]]]]:
    """The events the janitor listens to (subscribe each in the queue group ``QUEUE``)."""
    return [
        (subjects.WORKER_TASK_REPORTS_ALL, janitor.on_task_report),
        (subjects.AGENT_STATES_ALL, janitor.on_transition),
    ]
