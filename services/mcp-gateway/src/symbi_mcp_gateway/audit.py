"""The gateway's audit records: tool decisions and outcomes, verification and pin changes.

Records are ``AuditEvent``s into the AUDIT stream (``audit_events``). On the call path
they go through the non-blocking ``AuditBuffer`` (batched; a full buffer fails the
call closed), or, when a policy requires audit, through ``AuditPublisher`` and are
acknowledged by JetStream before the call goes on. Events about servers, tools and
pins (``tool.verification``, ``tool.pinned``, ``tool.unpinned``, ``tool.server.*``)
are buffered.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from symbi_common.audit_events import AuditBuffer, AuditSink, build_event
from symbi_common.errors import UnavailableError
from symbi_proto.v1 import audit_pb2

if TYPE_CHECKING:
    from symbi_mcp_gateway.invocation import Call

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, source: str, publisher: AuditSink, buffer: AuditBuffer) -> None:
        self.source = source
        self.publisher = publisher
        self.buffer = buffer

    async def record(
        self,
        event_type: str,
        call: Call,
        details: dict[str, Any],
        outcome: audit_pb2.AuditOutcome.ValueType,
        *,
        durable: bool,
    ) -> None:
        """Record one event of a call; raises ``UnavailableError`` when it cannot be (fail closed)."""
        req = call.request
        agent = req.agent_id
        if not agent:
            details = {**details, "requested_by": req.requested_by}

        def event() -> audit_pb2.AuditEvent:
            return build_event(event_type, source=self.source, agent_id=agent, details=details, outcome=outcome,
                               correlation_id=call.correlation_id,
                               tenant=call.who.tenant if call.who is not None else "")  # fmt: skip

        if durable:
            await self.publisher.emit(event())
        elif not self.buffer.offer(event):
            raise UnavailableError(f"the audit buffer is full ({self.buffer.pending} events waiting)")

    def note(self, event_type: str, details: dict[str, Any]) -> None:
        """Record an event about servers, tools or pins (never blocks; a full buffer is logged)."""

        def event() -> audit_pb2.AuditEvent:
            return build_event(event_type, source=self.source, details=details)

        if not self.buffer.offer(event):
            log.error("audit buffer full: %s event lost (%s)", event_type, details)
