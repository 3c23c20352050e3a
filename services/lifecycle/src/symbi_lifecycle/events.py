"""What every transition tells the world: an audit event (JetStream) and a state event.

A transition is stored in Redis together with its ``Outbound`` entry (the audit
event and the ``StateTransition``) in one script; ``TransitionEvents.publish`` then
sends both and clears the entry. If the process dies in between, the entry is still
in the outbox and is sent by the next flush (the audit stream drops the duplicate by
event id), so no stored transition goes unaudited.

Audit event types: ``agent.created`` for the first record of an agent,
``agent.state_changed`` for every transition after it.
"""

from __future__ import annotations

import hashlib
import logging
import struct

from nats.aio.client import Client

from symbi_common import subjects, telemetry
from symbi_common.audit_events import AuditSink, build_event
from symbi_lifecycle import states
from symbi_lifecycle.store import AgentStore, Outbound
from symbi_proto.v1 import agent_pb2, audit_pb2

log = logging.getLogger(__name__)

CREATED = "agent.created"
STATE_CHANGED = "agent.state_changed"


def pack(transition: agent_pb2.StateTransition, event: audit_pb2.AuditEvent) -> Outbound:
    head = transition.SerializeToString()
    return Outbound(event.event_id, struct.pack(">I", len(head)) + head + event.SerializeToString())


def unpack(outbound: Outbound) -> tuple[agent_pb2.StateTransition, audit_pb2.AuditEvent]:
    (size,) = struct.unpack_from(">I", outbound.data)
    transition = agent_pb2.StateTransition()
    transition.ParseFromString(outbound.data[4 : 4 + size])
    event = audit_pb2.AuditEvent()
    event.ParseFromString(outbound.data[4 + size :])
    return transition, event


def audit_event(
    transition: agent_pb2.StateTransition, record: agent_pb2.AgentRecord, source: str
) -> audit_pb2.AuditEvent:
    """The audit event of ``transition``; it gets the event id the transition names."""
    d = record.definition
    details: dict[str, object] = {
        "from": states.name(transition.from_state) if transition.from_state else "",
        "to": states.name(transition.to_state),
        "cause": states.cause_name(transition.cause) if transition.cause else "",
        "reason": transition.reason,
        "actor": transition.actor,
        "revision": transition.revision,
        "name": d.metadata.name,
    }
    if transition.task_id:
        details["task_id"] = transition.task_id
    created = transition.from_state == agent_pb2.AGENT_STATE_UNSPECIFIED
    if created:
        details |= {
            "version": d.metadata.version,
            "capabilities": list(d.capabilities),
            "format": agent_pb2.DefinitionFormat.Name(d.source.format).removeprefix("DEFINITION_FORMAT_").lower(),
            "definition_sha256": hashlib.sha256(d.SerializeToString(deterministic=True)).hexdigest(),
            "key_id": record.identity.key_id,
        }
    event = build_event(
        CREATED if created else STATE_CHANGED,
        source=source,
        agent_id=record.agent_id,
        tenant=d.tenant,
        details=details,
        correlation_id=transition.task_id,
    )
    event.event_id = transition.event_id
    event.timestamp.CopyFrom(transition.time)
    return event


class TransitionEvents:
    """Publishes outbox entries: the audit event (durably, deduplicated) then the state event."""

    def __init__(self, nc: Client, audit: AuditSink, store: AgentStore) -> None:
        self.nc = nc
        self.audit = audit
        self.store = store

    async def publish(self, outbound: Outbound) -> None:
        """Send one entry and clear it; raises (leaving it in the outbox) if the audit event is not stored."""
        transition, event = unpack(outbound)
        await self.audit.emit(event)
        subject = subjects.agent_state(transition.agent_id)
        try:
            await self.nc.publish(subject, transition.SerializeToString(), headers=telemetry.inject())
        except Exception as exc:  # the audit record is what must not be lost; the live event is best effort
            log.warning("cannot publish %s on %s: %r", transition.event_id, subject, exc)
        await self.store.published(outbound.event_id)

    async def flush(self) -> int:
        """Publish everything left in the outbox (after a crash or a failed publish); returns how many."""
        sent = 0
        async for outbound in self.store.outbox():
            await self.publish(outbound)
            sent += 1
        return sent
