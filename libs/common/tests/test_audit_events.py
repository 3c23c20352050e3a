"""Audit events reach the AUDIT stream durably, once, with the trace id; bad ones are refused."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from symbi_common import audit_events, natsio, subjects, telemetry
from symbi_common.errors import InvalidArgumentError, UnavailableError
from symbi_common.retry import RetryPolicy
from symbi_common.settings import Settings
from symbi_proto.v1 import audit_pb2

pytestmark = pytest.mark.integration


async def stored_since(nc: Client, start_seq: int, subject: str) -> list[audit_pb2.AuditEvent]:
    js = nc.jetstream()
    sub = await js.subscribe(
        subject,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq),
    )
    events: list[audit_pb2.AuditEvent] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except TimeoutError:
                return events
            events.append(audit_pb2.AuditEvent.FromString(msg.data))
            assert msg.headers is not None
            assert msg.headers[natsio.MSG_ID_HEADER] == events[-1].event_id
    finally:
        await sub.unsubscribe()


async def test_record_stores_the_event_once_with_its_trace(nc: Client, span_exporter: InMemorySpanExporter) -> None:
    publisher = audit_events.AuditPublisher(nc.jetstream(), "test-source")
    with telemetry.tracer().start_as_current_span("op") as span:
        event = await publisher.record(
            "test.emitted",
            agent_id="agent-1",
            details={"tool": "fs/read", "bytes": 12, "ok": True},
            outcome=audit_pb2.AUDIT_OUTCOME_DENIED,
            correlation_id="decision-1",
            data_labels=["pii"],
        )
    seq = await publisher.emit(event)  # a retry of the same event is a duplicate, not a second record
    stored = await stored_since(nc, seq, subjects.audit_event("test.emitted"))
    assert [e.event_id for e in stored] == [event.event_id]
    got = stored[0]
    assert got.source == "test-source"
    assert got.agent_id == "agent-1"
    assert got.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert dict(got.details) == {"tool": "fs/read", "bytes": 12.0, "ok": True}
    assert list(got.data_labels) == ["pii"]
    assert got.trace_id == f"{span.get_span_context().trace_id:032x}"
    assert got.timestamp.seconds > 0
    info = await nc.jetstream().stream_info(subjects.AUDIT_STREAM)
    assert info.config.subjects == [subjects.AUDIT_EVENTS]
    assert info.config.duplicate_window == audit_events.STREAM_DUPLICATE_WINDOW_S


@pytest.mark.parametrize(
    ("event_type", "details", "message"),
    [
        ("bad type", {}, "not a valid subject token"),
        ("policy..decision", {}, "not a valid subject token"),
        ("ok.type", {"value": object()}, "not JSON-like"),
        ("ok.type", {"blob": "x" * (audit_events.MAX_DETAILS_BYTES + 1)}, "exceed"),
        ("batch.sneaky", {}, "may not start with 'batch'"),
        ("ok.type", {1: "non-string key"}, "keys must be strings"),
    ],
)
async def test_malformed_events_are_refused_before_publishing(
    nc: Client, event_type: str, details: dict[str, object], message: str
) -> None:
    publisher = audit_events.AuditPublisher(nc.jetstream(), "test")
    with pytest.raises(InvalidArgumentError, match=message):
        await publisher.record(event_type, details=details)
    with pytest.raises(InvalidArgumentError, match="needs event_id"):
        await publisher.emit(audit_pb2.AuditEvent(event_type="ok.type"))


async def test_disabled_auditing_records_nothing(nc: Client) -> None:
    publisher = audit_events.AuditPublisher(nc.jetstream(), "test", enabled=False)
    event = await publisher.record("test.disabled")
    assert await publisher.emit(event) == 0


async def test_unreachable_stream_is_unavailable_not_silent(settings: Settings) -> None:
    nc = await natsio.connect(settings.nats, "test-closed")
    publisher = audit_events.AuditPublisher(
        nc.jetstream(), "test", timeout_s=0.5, retry_policy=RetryPolicy(deadline_s=0.5)
    )
    await nc.close()
    with pytest.raises(UnavailableError, match="not stored"):
        await publisher.record("test.lost")
