"""``api.request`` audit events: every mutating call, and every refused one, whatever its outcome.

Recorded: each POST, PUT, PATCH and DELETE (the calls that may change something, and
the few queries sent as POST), and any request refused with 401, 403, 413 or 429. The
event names the key (its id and principal, never the key), the method, route template
and path, the HTTP status and error code, the request id (as correlation id), the
policy decision that admitted or refused it, and the agent when the path names one.
Request bodies and headers are never recorded.

Events go through an ``AuditBuffer`` (batched into the AUDIT stream off the request's
path); ``has_room`` lets the HTTP layer refuse mutations while it is full.
"""

from __future__ import annotations

import logging
from typing import Any

from symbi_api.http_layer import MUTATING, Exchange
from symbi_common.audit_events import AuditBuffer, build_event
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

EVENT_TYPE = "api.request"
REFUSED = frozenset({401, 403, 413, 429})


def outcome_of(status: int) -> audit_pb2.AuditOutcome.ValueType:
    if status < 400:
        return audit_pb2.AUDIT_OUTCOME_SUCCESS
    if status in REFUSED:
        return audit_pb2.AUDIT_OUTCOME_DENIED
    return audit_pb2.AUDIT_OUTCOME_FAILURE


class RequestAuditor:
    def __init__(self, buffer: AuditBuffer, source: str) -> None:
        self.buffer = buffer
        self.source = source
        self.dropped = 0

    def has_room(self) -> bool:
        return not self.buffer.enabled or self.buffer.pending < self.buffer.capacity

    @staticmethod
    def wanted(exchange: Exchange) -> bool:
        return exchange.method in MUTATING or exchange.status in REFUSED

    def record(self, exchange: Exchange) -> None:
        if not self.wanted(exchange):
            return
        caller = exchange.state.get("caller")
        details: dict[str, Any] = {
            "request_id": exchange.request_id,
            "method": exchange.method,
            "route": exchange.route,
            "path": exchange.path,
            "status": exchange.status,
            "duration_ms": round(exchange.seconds * 1000, 3),
        }
        if caller is not None:
            details |= {"key_id": caller.key_id, "principal": caller.name, "principal_kind": caller.kind}
        code = exchange.state.get("error_code")
        if code and exchange.status >= 400:
            details["code"] = code
        admission = exchange.state.get("admission")
        if admission:
            details["admission"] = admission
        event = build_event(
            EVENT_TYPE,
            source=self.source,
            agent_id=str(exchange.path_params.get("agent_id", "")),
            details=details,
            outcome=outcome_of(exchange.status),
            correlation_id=exchange.request_id,
            tenant=getattr(caller, "tenant", ""),
        )
        if not self.buffer.offer(event):
            self.dropped += 1
            log.error("audit buffer full: api.request %s not recorded", exchange.request_id)
