"""A typed client of the lifecycle service (``symbi.lifecycle.*``), for the CLI, scheduler and API."""

from __future__ import annotations

import builtins
from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_common import natsio, subjects
from symbi_proto.v1 import agent_pb2

Resp = TypeVar("Resp", bound=Message)
S = agent_pb2


class LifecycleClient:
    def __init__(self, nc: Client, *, timeout_s: float = 5.0, actor: str = "", roles: tuple[str, ...] = ()) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.actor = actor
        self.roles = roles

    async def _call(self, operation: str, message: Message, response: type[Resp], timeout_s: float = 0) -> Resp:
        subject = subjects.lifecycle(operation)
        return await natsio.request(self.nc, subject, message, response, timeout=timeout_s or self.timeout_s)

    async def create(self, request: agent_pb2.CreateAgentRequest) -> agent_pb2.CreateAgentResponse:
        if not request.requested_by:
            request.requested_by = self.actor
        if not request.requester_roles:
            request.requester_roles.extend(self.roles)
        return await self._call("create", request, agent_pb2.CreateAgentResponse, self.timeout_s * 2)

    async def create_from(
        self, source: agent_pb2.DefinitionSource, *, validate_only: bool = False, idempotency_key: str = ""
    ) -> agent_pb2.CreateAgentResponse:
        return await self.create(
            agent_pb2.CreateAgentRequest(source=source, validate_only=validate_only, idempotency_key=idempotency_key)
        )

    async def get(self, agent_id: str) -> agent_pb2.AgentRecord:
        reply = await self._call("get", agent_pb2.GetAgentRequest(agent_id=agent_id), agent_pb2.GetAgentResponse)
        return reply.agent

    async def list(self, request: agent_pb2.ListAgentsRequest | None = None) -> agent_pb2.ListAgentsResponse:
        return await self._call("list", request or agent_pb2.ListAgentsRequest(), agent_pb2.ListAgentsResponse)

    async def transition(
        self,
        agent_id: str,
        to_state: int,
        cause: int,
        *,
        reason: str = "",
        task_id: str = "",
        expected_revision: int = 0,
        usage: object = None,
    ) -> agent_pb2.TransitionAgentResponse:
        request = agent_pb2.TransitionAgentRequest(
            agent_id=agent_id,
            to_state=to_state,  # type: ignore[arg-type]
            cause=cause,  # type: ignore[arg-type]
            reason=reason,
            actor=self.actor,
            task_id=task_id,
            expected_revision=expected_revision,
        )
        if usage is not None:
            request.usage.CopyFrom(usage)  # type: ignore[arg-type]
        return await self._call("transition", request, agent_pb2.TransitionAgentResponse, self.timeout_s * 8)

    async def suspend(self, agent_id: str, reason: str = "") -> agent_pb2.TransitionAgentResponse:
        return await self.transition(agent_id, S.AGENT_STATE_SUSPENDED, S.TRANSITION_CAUSE_OVERRIDE, reason=reason)

    async def resume(self, agent_id: str, reason: str = "") -> agent_pb2.TransitionAgentResponse:
        return await self.transition(agent_id, S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_OVERRIDE, reason=reason)

    async def terminate(
        self, agent_id: str, *, reason: str = "", grace_s: float = 0, timeout_s: float = 0
    ) -> agent_pb2.TerminateAgentResponse:
        request = agent_pb2.TerminateAgentRequest(
            agent_id=agent_id, cause=S.TRANSITION_CAUSE_OVERRIDE, reason=reason, actor=self.actor
        )
        if grace_s:
            request.grace_period.FromNanoseconds(int(grace_s * 1e9))
        return await self._call("terminate", request, agent_pb2.TerminateAgentResponse, timeout_s or self.timeout_s * 8)

    async def history(self, agent_id: str, *, page_size: int = 1000) -> builtins.list[agent_pb2.StateTransition]:
        out: builtins.list[agent_pb2.StateTransition] = []
        token = ""
        while True:
            request = agent_pb2.AgentHistoryRequest(agent_id=agent_id)
            request.page.page_size, request.page.page_token = page_size, token
            reply = await self._call("history", request, agent_pb2.AgentHistoryResponse)
            out.extend(reply.transitions)
            token = reply.page.next_page_token
            if not token:
                return out

    async def identity(self, agent_id: str) -> agent_pb2.GetAgentIdentityResponse:
        request = agent_pb2.GetAgentIdentityRequest(agent_id=agent_id)
        return await self._call("identity", request, agent_pb2.GetAgentIdentityResponse)

    async def counts(self) -> agent_pb2.CountAgentsResponse:
        return await self._call("counts", agent_pb2.CountAgentsRequest(), agent_pb2.CountAgentsResponse)
