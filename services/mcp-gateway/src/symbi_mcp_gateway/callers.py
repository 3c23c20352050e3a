"""Who is calling: an agent (its lifecycle record gives tenant and capabilities) or an operator.

Agent records are cached for a few seconds (a call burst costs one lookup). An agent
that does not exist, or that is not ready or running, is refused; when the lifecycle
service cannot be asked the call is refused too (fail closed), never decided on a
subject without its capabilities.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from symbi_common.policy_client import Principal
from symbi_proto.v1 import agent_pb2

CACHE_S = 5.0
USABLE = frozenset({agent_pb2.AGENT_STATE_READY, agent_pb2.AGENT_STATE_RUNNING})


class AgentRecords(Protocol):
    async def get(self, agent_id: str) -> agent_pb2.AgentRecord: ...


class Callers:
    def __init__(self, agents: AgentRecords, *, cache_s: float = CACHE_S) -> None:
        self.agents = agents
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal(self, agent_id: str, requested_by: str, roles: Sequence[str]) -> Principal:
        if not agent_id:
            if not requested_by:
                raise InvalidArgumentError("a request needs an agent_id or requested_by")
            return Principal("user", requested_by, roles=list(roles))
        cached = self._cache.get(agent_id)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            record = await self.agents.get(agent_id)
        except NotFoundError:
            raise PermissionDeniedError(f"agent {agent_id} is not known") from None
        if record.state not in USABLE:
            state = agent_pb2.AgentState.Name(record.state).removeprefix("AGENT_STATE_").lower()
            raise FailedPreconditionError(f"agent {agent_id} is {state}; only ready or running agents call tools")
        definition = record.definition
        who = Principal(
            "agent",
            agent_id,
            tenant=definition.tenant,
            capabilities=list(definition.capabilities),
            attributes={"agent_name": definition.metadata.name} if definition.metadata.name else {},
        )
        self._cache[agent_id] = (time.monotonic() + self.cache_s, who)
        return who
