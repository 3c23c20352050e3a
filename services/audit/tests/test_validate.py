"""What producers may send; each refusal has its reason."""

from __future__ import annotations

import pytest

from symbi_audit.validate import check, parse_message
from symbi_common import subjects
from symbi_common.audit_events import build_event
from symbi_common.ids import new_id
from symbi_proto.v1 import audit_pb2


def good() -> audit_pb2.AuditEvent:
    return build_event("tool.call", source="t", agent_id="a", details={"x": 1})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: setattr(e, "event_id", "nope"), "is not a UUID"),
        (lambda e: setattr(e, "event_type", "bad type"), "not a valid subject token"),
        (lambda e: setattr(e, "event_type", "audit.log_created"), "reserved for the audit log"),
        (lambda e: e.ClearField("timestamp"), "timestamp is missing"),
        (lambda e: setattr(e.timestamp, "seconds", 2**40), "in the future"),
        (lambda e: setattr(e, "chain_hash", b"x" * 32), "assigned by the log"),
        (lambda e: setattr(e, "key_id", "k"), "assigned by the log"),
        (lambda e: setattr(e, "agent_id", "a" * 600), "agent_id is longer"),
        (lambda e: e.data_labels.append(""), "data labels must be non-empty"),
        (lambda e: e.data_labels.extend(["x"] * 65), "more than 64 data labels"),
        (lambda e: e.details.fields["n"].__setattr__("number_value", float("inf")), "no canonical form"),
        (lambda e: e.details.fields["blob"].__setattr__("string_value", "x" * 70_000), "details exceed"),
    ],
)
def test_refusals(change: object, reason: str) -> None:
    event = good()
    change(event)  # type: ignore[operator]
    assert reason in (check(event) or "")


def test_a_good_event_passes() -> None:
    assert check(good()) is None


def test_a_batch_keeps_its_good_events_and_refuses_the_rest() -> None:
    bad = good()
    bad.sequence = 3
    batch = audit_pb2.AuditBatch(batch_id=new_id(), events=[good(), bad, good()])
    events, rejected = parse_message(subjects.AUDIT_BATCH, batch.SerializeToString())
    assert len(events) == 2
    assert [r.reason for r in rejected] == [
        "sequence, chain_hash, signature and key_id are assigned by the log, not by producers"
    ]
    assert audit_pb2.AuditEvent.FromString(rejected[0].payload).sequence == 3
    assert parse_message(subjects.AUDIT_BATCH, b"\xff\xff")[1][0].reason == "not a valid symbi.v1.AuditBatch"
