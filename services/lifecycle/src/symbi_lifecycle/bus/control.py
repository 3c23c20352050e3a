"""Control requests agents send on their own ``symbi.bus.ctl.<agent>.<op>`` subjects.

- ``directory``: an agent's public identity and state (``symbi-router`` for the router).
- ``topic_key``: the current key of a topic, sealed to the asking agent, only when
  policy lets it subscribe (``message_send``, operation ``subscribe``, resource
  ``topic:<name>``); the grant is audited.
- ``rejected``: a receiver's report of an envelope it refused: counted by reason,
  audited, and kept as a dead letter.

The agent is the subject's token, which the broker only lets that agent publish on.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg

from symbi_common import envelope, natsio, policy_client, subjects
from symbi_common.audit_events import AuditBuffer, build_event
from symbi_common.bus.client import GRANT_CONTENT_TYPE, ROUTER_ID
from symbi_common.envelope import AgentKeys
from symbi_common.errors import NotFoundError, PermissionDeniedError, UnavailableError
from symbi_common.policy_client import PolicyDecider
from symbi_lifecycle.bus.deadletters import DeadLetters
from symbi_lifecycle.bus.directory import ENDED_STATES, AgentDirectory, topic_target
from symbi_lifecycle.bus.keys import TopicKeys
from symbi_lifecycle.bus.metrics import RouterMetrics
from symbi_proto.v1 import agent_pb2, audit_pb2, message_pb2

log = logging.getLogger(__name__)
M = message_pb2


def agent_of(subject: str) -> str:
    """``symbi.bus.ctl.<agent>.<op>`` → agent."""
    return subject.split(".")[3]


class Control:
    def __init__(
        self,
        directory: AgentDirectory,
        router_keys: AgentKeys,
        topics: TopicKeys,
        policy: PolicyDecider,
        audit: AuditBuffer,
        metrics: RouterMetrics,
        dead_letters: DeadLetters,
        instance_id: str,
    ) -> None:
        self.directory = directory
        self.router_keys = router_keys
        self.topics = topics
        self.policy = policy
        self.audit = audit
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.instance_id = instance_id

    async def lookup(self, req: agent_pb2.GetAgentIdentityRequest, meta: natsio.RequestMeta) -> Message:
        if req.agent_id == ROUTER_ID:
            return agent_pb2.GetAgentIdentityResponse(
                agent_id=ROUTER_ID, identity=self.router_keys.identity(), state=agent_pb2.AGENT_STATE_READY
            )
        info = await self.directory.get(req.agent_id) if subjects.is_token(req.agent_id) else None
        if info is None:
            raise NotFoundError(f"no agent {req.agent_id!r}")
        return agent_pb2.GetAgentIdentityResponse(agent_id=info.agent_id, identity=info.identity, state=info.state)

    async def topic_key(self, req: message_pb2.TopicKeyRequest, meta: natsio.RequestMeta) -> Message:
        agent_id = agent_of(meta.subject)
        subjects.bus_topic(req.topic)  # raises InvalidArgumentError for a bad name
        info = await self.directory.get(agent_id)
        if info is None or info.state in ENDED_STATES:
            raise PermissionDeniedError(f"agent {agent_id} may not hold topic keys")
        decision = await self.policy.evaluate(
            policy_client.request("message_send", info.principal(), topic_target(req.topic), operation="subscribe")
        )
        if decision.WhichOneof("outcome") == "deny":
            self._audit(
                "message.topic_key_refused",
                agent_id,
                {"topic": req.topic, "reason": decision.deny.reason, "decision_id": decision.decision_id},
                audit_pb2.AUDIT_OUTCOME_DENIED,
            )
            raise PermissionDeniedError(f"may not subscribe to {req.topic}: {decision.deny.reason}")
        epoch, key = await self.topics.current(req.topic)
        await self.topics.record_grant(agent_id, req.topic)
        grant = M.TopicKeyGrant(topic=req.topic, epoch=epoch, key=key.key, key_id=key.key_id)
        pair = envelope.pair_key(self.router_keys, agent_id, info.identity)
        sealed = envelope.seal(
            self.router_keys,
            pair,
            grant.SerializeToString(),
            kind=M.MESSAGE_KIND_DIRECT,
            recipient=agent_id,
            content_type=GRANT_CONTENT_TYPE,
        )
        self._audit(
            "message.topic_key_granted",
            agent_id,
            {"topic": req.topic, "key_id": key.key_id, "decision_id": decision.decision_id},
            audit_pb2.AUDIT_OUTCOME_SUCCESS,
        )
        return M.TopicKeyResponse(grant=sealed)

    async def on_rejected(self, msg: Msg) -> None:
        """A receiver refused an envelope: count, audit, keep as a dead letter."""
        agent_id = agent_of(msg.subject)
        report = M.MessageRejected()
        try:
            report.ParseFromString(msg.data)
        except DecodeError:
            log.warning("unreadable rejection report from %s", agent_id)
            return
        name = M.MessageRejectReason.Name(report.reason) if report.reason in M.MessageRejectReason.values() else "?"
        reason = name.removeprefix("MESSAGE_REJECT_REASON_").lower()
        self.metrics.receiver_rejected.labels(reason).inc()
        header = report.header
        details = {
            "message_id": header.message_id,
            "sender": header.sender,
            "recipient": agent_id,
            "reason": name,
            "detail": report.detail[:1000],
            "rejected_by": agent_id,
        }
        self._audit("message.rejected", agent_id, details, audit_pb2.AUDIT_OUTCOME_FAILURE)
        if report.envelope:
            try:
                await self.dead_letters.park(
                    subjects.bus_inbox(agent_id),
                    bytes(report.envelope),
                    reason,
                    f"refused by {agent_id}: {report.detail}",
                )
            except UnavailableError as exc:
                log.warning("rejected message from %s not kept as a dead letter: %s", header.sender, exc)

    def _audit(self, event_type: str, agent_id: str, details: dict[str, Any], outcome: int) -> None:
        source = self.instance_id
        if not self.audit.offer(
            lambda: build_event(
                event_type,
                source=source,
                agent_id=agent_id,
                details=details,
                outcome=outcome,  # type: ignore[arg-type]
            )
        ):
            log.error("audit buffer full: %s for %s not recorded", event_type, agent_id)
