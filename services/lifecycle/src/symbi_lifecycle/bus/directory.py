"""Who an agent is, for the router: identity, state, tenant, capabilities; cached briefly.

Lookups read the agent's record from Redis (the lifecycle store) and keep it for
``ttl_s``; a state change announced on ``symbi.agent.<id>.state`` drops the entry at
once, so a suspended or terminated agent stops sending and receiving without waiting
for the cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from symbi_common.errors import NotFoundError
from symbi_common.policy_client import Principal, Target
from symbi_lifecycle.store import AgentStore
from symbi_proto.v1 import agent_pb2

A = agent_pb2
SENDING_STATES = frozenset({A.AGENT_STATE_READY, A.AGENT_STATE_RUNNING})
ENDED_STATES = frozenset({A.AGENT_STATE_TERMINATED, A.AGENT_STATE_FAILED})
RECEIVING_STATES = frozenset(
    {A.AGENT_STATE_INITIALIZING, A.AGENT_STATE_READY, A.AGENT_STATE_RUNNING, A.AGENT_STATE_SUSPENDED}
)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent_id: str
    name: str
    tenant: str
    state: agent_pb2.AgentState.ValueType
    identity: agent_pb2.AgentIdentity
    capabilities: tuple[str, ...]

    @classmethod
    def of(cls, record: agent_pb2.AgentRecord) -> AgentInfo:
        definition = record.definition
        return cls(
            record.agent_id,
            definition.metadata.name,
            definition.tenant,
            record.state,
            record.identity,
            tuple(definition.capabilities),
        )

    @property
    def state_name(self) -> str:
        return A.AgentState.Name(self.state).removeprefix("AGENT_STATE_")

    def principal(self) -> Principal:
        return Principal(
            "agent", self.agent_id, tenant=self.tenant, capabilities=self.capabilities, attributes={"name": self.name}
        )

    def target(self) -> Target:
        return Target("agent", self.agent_id, tenant=self.tenant, owner=self.agent_id, attributes={"name": self.name})


class AgentDirectory:
    def __init__(self, store: AgentStore, *, ttl_s: float = 2.0, size: int = 50_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.size = size
        self._cache: OrderedDict[str, tuple[float, AgentInfo | None]] = OrderedDict()

    async def get(self, agent_id: str) -> AgentInfo | None:
        """The agent, or None if there is no such agent (raises ``UnavailableError`` if Redis is down)."""
        now = time.monotonic()
        entry = self._cache.get(agent_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        try:
            info: AgentInfo | None = AgentInfo.of((await self.store.get(agent_id)).record)
        except NotFoundError:
            info = None
        self._cache[agent_id] = (now + self.ttl_s, info)
        self._cache.move_to_end(agent_id)
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return info

    def forget(self, agent_id: str) -> None:
        self._cache.pop(agent_id, None)


def topic_target(topic: str) -> Target:
    """A topic for policy: its first dot-separated segment is its tenant (``research.findings``: research)."""
    return Target("topic", topic, tenant=topic.split(".", 1)[0])
