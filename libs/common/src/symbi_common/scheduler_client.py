"""A typed client of the scheduler (``symbi.scheduler.*``), for the CLI, API and tests."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_common import natsio, subjects
from symbi_proto.v1 import common_pb2, scheduler_pb2, task_pb2

Resp = TypeVar("Resp", bound=Message)


class SchedulerClient:
    def __init__(self, nc: Client, *, timeout_s: float = 10.0, actor: str = "") -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.actor = actor

    async def _call(self, operation: str, message: Message, response: type[Resp], timeout_s: float = 0) -> Resp:
        subject = subjects.scheduler(operation)
        return await natsio.request(self.nc, subject, message, response, timeout=timeout_s or self.timeout_s)

    async def schedule(
        self,
        agent_id: str,
        *,
        priority: int = 0,
        limits: common_pb2.ResourceLimits | None = None,
        idempotency_key: str = "",
        tenant: str = "",
    ) -> scheduler_pb2.ScheduleAgentResponse:
        request = scheduler_pb2.ScheduleAgentRequest(
            agent_id=agent_id,
            priority=priority,  # type: ignore[arg-type]
            idempotency_key=idempotency_key,
            requested_by=self.actor,
            tenant=tenant,
        )
        if limits is not None:
            request.limits.CopyFrom(limits)
        return await self._call("schedule", request, scheduler_pb2.ScheduleAgentResponse)

    async def get_task(self, task_id: str) -> task_pb2.TaskStatus:
        reply = await self._call(
            "get_task", scheduler_pb2.GetTaskRequest(task_id=task_id), scheduler_pb2.GetTaskResponse
        )
        return reply.task

    async def list_tasks(self, *, agent_id: str = "", states: tuple[int, ...] = ()) -> list[task_pb2.TaskStatus]:
        out: list[task_pb2.TaskStatus] = []
        token = ""
        while True:
            request = scheduler_pb2.ListTasksRequest(agent_id=agent_id, states=states)  # type: ignore[arg-type]
            request.page.page_size, request.page.page_token = 1000, token
            reply = await self._call("list_tasks", request, scheduler_pb2.ListTasksResponse)
            out.extend(reply.tasks)
            token = reply.page.next_page_token
            if not token:
                return out

    async def cancel(self, task_id: str, reason: str = "") -> task_pb2.TaskStatus:
        request = scheduler_pb2.CancelTaskRequest(task_id=task_id, reason=reason, requested_by=self.actor)
        reply = await self._call("cancel_task", request, scheduler_pb2.CancelTaskResponse, self.timeout_s * 4)
        return reply.task

    async def status(self) -> scheduler_pb2.SystemStatus:
        return await self._call("status", scheduler_pb2.GetSystemStatusRequest(), scheduler_pb2.SystemStatus)
