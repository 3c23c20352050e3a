"""Who asks, and may they: agents from the lifecycle service, decisions from the policy service.

Every request names an agent; ``AgentDirectory`` looks it up (briefly cached), so an
unknown agent is a ``NotFoundError`` and the tenant and capabilities in each policy
request are the lifecycle service's, never the caller's word.

``Guard`` asks the ``data_access`` enforcement point, failing closed:

- the agent's own memory: one decision per request, resource type ``memory``
  (short- and long-term) or ``working``, ``owner`` the agent, operation ``read``,
  ``write`` or ``delete``, the labels of the items written;
- shared knowledge: a decision for the request (resource ``knowledge``, no id), then
  one per item (id, owner, tenant, labels, sensitivity) in one batch. A denied read of
  an item withholds it (the response counts it); a denied write or delete refuses.

Conditions: ``require_audit`` is honoured (the policy service records the decision,
and shared-knowledge writes and deletes are audited here too) and ``max_bytes``
caps an item's content; any other condition cannot be enforced here, so the
decision counts as a deny, with that as the reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from symbi_common.errors import FailedPreconditionError, PermissionDeniedError
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyDecider, Principal, Target, is_allowed, request
from symbi_context.items import SENSITIVITY_NAMES, K
from symbi_proto.v1 import agent_pb2, policy_pb2

AGENT_CACHE_S = 5.0
HONOURED = ("require_audit", "max_bytes")


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    tenant: str
    capabilities: tuple[str, ...]


class AgentDirectory:
    def __init__(self, lifecycle: LifecycleClient, *, cache_s: float = AGENT_CACHE_S) -> None:
        self.lifecycle = lifecycle
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Agent]] = {}

    async def get(self, agent_id: str) -> Agent:
        """The agent as the lifecycle service knows it; ``NotFoundError`` if it does not."""
        hit = self._cache.get(agent_id)
        if hit is not None and time.monotonic() < hit[0]:
            return hit[1]
        record = await self.lifecycle.get(agent_id)  # NotFoundError: "agent ... not found"
        if record.state == agent_pb2.AGENT_STATE_TERMINATED:
            raise FailedPreconditionError(f"agent {agent_id} is terminated")
        d = record.definition
        agent = Agent(agent_id, d.tenant, tuple(d.capabilities))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[agent_id] = (time.monotonic() + self.cache_s, agent)
        return agent


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""
    max_bytes: int = 0


@dataclass(slots=True)
class ItemRef:
    """What a decision about one shared item needs to know."""

    context_id: str
    owner: str
    tenant: str
    labels: Sequence[str] = ()
    sensitivity: int = 0
    document_id: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def verdict(decision: policy_pb2.PolicyDecision) -> Verdict:
    if not is_allowed(decision):
        return Verdict(False, decision.deny.reason or "denied by policy")
    max_bytes = 0
    for condition in decision.allow_with_conditions.conditions:
        kind = condition.WhichOneof("kind")
        if kind == "max_bytes":
            max_bytes = int(condition.max_bytes.limit)
        elif kind not in HONOURED:
            return Verdict(False, f"condition {kind} of {condition.rule} cannot be enforced by the context service")
    return Verdict(True, max_bytes=max_bytes)


class Guard:
    def __init__(self, policy: PolicyDecider, *, enforce: bool = True) -> None:
        self.policy = policy
        self.enforce = enforce

    @staticmethod
    def principal(agent: Agent) -> Principal:
        return Principal("agent", agent.agent_id, tenant=agent.tenant, capabilities=agent.capabilities)

    def _refuse(self, outcome: Verdict, what: str) -> None:
        if not outcome.allowed and self.enforce:
            raise PermissionDeniedError(f"{what}: {outcome.reason}")

    async def own(self, agent: Agent, kind: int, operation: str, labels: Sequence[str] = ()) -> Verdict:
        """The one decision for a request on the agent's own memory of ``kind``; raises on deny."""
        rtype = "working" if kind == K.MEMORY_KIND_WORKING else "memory"
        target = Target(rtype, agent.agent_id, tenant=agent.tenant, owner=agent.agent_id, labels=sorted(set(labels)))
        outcome = verdict(await self.policy.evaluate(request("data_access", self.principal(agent), target,
                                                             operation=operation)))  # fmt: skip
        self._refuse(outcome, f"{operation} of {rtype} memory of {agent.agent_id}")
        return outcome

    async def knowledge(self, agent: Agent, operation: str) -> Verdict:
        """May the agent ``operation`` shared knowledge at all? Raises with the reason if not."""
        target = Target("knowledge", tenant=agent.tenant)
        outcome = verdict(await self.policy.evaluate(request("data_access", self.principal(agent), target,
                                                             operation=operation)))  # fmt: skip
        self._refuse(outcome, f"{operation} of shared knowledge")
        return outcome

    async def items(self, agent: Agent, operation: str, refs: Sequence[ItemRef]) -> list[Verdict]:
        """One decision per shared item, in one batch (same order as ``refs``)."""
        if not refs:
            return []
        subject = self.principal(agent)
        requests = [
            request(
                "data_access",
                subject,
                Target(
                    "knowledge",
                    ref.context_id,
                    tenant=ref.tenant,
                    owner=ref.owner,
                    labels=list(ref.labels),
                    sensitivity=SENSITIVITY_NAMES.get(ref.sensitivity, ""),
                    attributes={"document_id": ref.document_id} if ref.document_id else {},
                ),
                operation=operation,
            )
            for ref in refs
        ]
        outcomes = [verdict(d) for d in await self.policy.evaluate_batch(requests)]
        if not self.enforce:
            return [Verdict(True, o.reason, o.max_bytes) for o in outcomes]
        return outcomes
