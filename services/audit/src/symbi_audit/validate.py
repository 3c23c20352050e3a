"""What the log accepts from producers; everything else goes to the dead-letter stream.

A message on ``symbi.audit.<type>`` holds one ``AuditEvent`` of that type; one on
``symbi.audit.batch`` holds an ``AuditBatch``. Each event needs a UUID ``event_id``,
a valid dotted ``event_type`` and a ``timestamp`` no more than ``MAX_CLOCK_SKEW_S``
ahead of this clock; ``details`` must have a canonical form and stay under 64 KiB;
the fields the log assigns (``sequence``, ``chain_hash``, ``signature``,
``key_id``) must be empty.

Types under ``audit.`` are the log's own (its genesis, key rotations, repairs): a
producer's event claiming one is refused, or a forged ``audit.key_rotated`` signed
by the log would teach verifiers to trust a key nobody vetted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from symbi_audit import canonical
from symbi_common import subjects
from symbi_common.audit_events import MAX_DETAILS_BYTES, event_subject
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import audit_pb2

MAX_CLOCK_SKEW_S = 300
MAX_FIELD_CHARS = 512
MAX_LABELS = 64
RESERVED_PREFIX = "audit."
_EVENT_PREFIX = f"{subjects.PREFIX}.audit."
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class Rejected:
    """One payload that cannot go into the log, and why."""

    payload: bytes
    reason: str


def parse_message(subject: str, data: bytes) -> tuple[list[audit_pb2.AuditEvent], list[Rejected]]:
    """The acceptable events in one message, and the rejected ones with their reasons."""
    if subject == subjects.AUDIT_BATCH:
        try:
            batch = audit_pb2.AuditBatch.FromString(data)
        except DecodeError:
            return [], [Rejected(data, "not a valid symbi.v1.AuditBatch")]
        events, rejected = [], []
        for event in batch.events:
            problem = check(event)
            if problem is None:
                events.append(event)
            else:
                rejected.append(Rejected(event.SerializeToString(), problem))
        return events, rejected
    try:
        event = audit_pb2.AuditEvent.FromString(data)
    except DecodeError:
        return [], [Rejected(data, "not a valid symbi.v1.AuditEvent")]
    problem = check(event)
    if problem is None and subject != _EVENT_PREFIX + event.event_type:
        problem = f"event type {event.event_type!r} published on {subject}"
    return ([event], []) if problem is None else ([], [Rejected(data, problem)])


def check(event: audit_pb2.AuditEvent, *, now: float | None = None) -> str | None:
    """Why ``event`` may not be appended, or None."""
    if not _UUID.fullmatch(event.event_id):
        return f"event_id {event.event_id!r} is not a UUID"
    try:
        event_subject(event.event_type)
    except InvalidArgumentError as exc:
        return exc.message
    if event.event_type.startswith(RESERVED_PREFIX):
        return f"event type {event.event_type!r} is reserved for the audit log itself"
    if not event.HasField("timestamp") or event.timestamp.seconds <= 0:
        return "timestamp is missing"
    if event.timestamp.seconds > (now or time.time()) + MAX_CLOCK_SKEW_S:
        return f"timestamp is more than {MAX_CLOCK_SKEW_S} s in the future"
    if event.sequence or event.chain_hash or event.signature or event.key_id:
        return "sequence, chain_hash, signature and key_id are assigned by the log, not by producers"
    if event.details.ByteSize() > MAX_DETAILS_BYTES:
        return f"details exceed {MAX_DETAILS_BYTES // 1024} KiB"
    for name in ("agent_id", "source", "tenant", "correlation_id", "trace_id"):
        if len(getattr(event, name)) > MAX_FIELD_CHARS:
            return f"{name} is longer than {MAX_FIELD_CHARS} characters"
    if len(event.data_labels) > MAX_LABELS:
        return f"more than {MAX_LABELS} data labels"
    if any(not label or len(label) > MAX_FIELD_CHARS for label in event.data_labels):
        return "data labels must be non-empty and short"
    try:
        canonical.check_details(event.details)
    except canonical.CanonicalError as exc:
        return f"details have no canonical form: {exc}"
    return None
