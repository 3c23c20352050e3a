"""Emitting audit events: every service's one way into the audit trail.

A producer builds an ``AuditEvent`` (the producer-owned fields of the contract in
``proto/symbi/v1/audit.proto``) and publishes it durably into the ``AUDIT`` JetStream
stream on ``symbi.audit.<event_type>`` with ``Nats-Msg-Id = event_id``:

- JetStream stores the event before acknowledging, so events wait in the stream while
  the audit service is down and are appended when it returns;
- a retried publish carries the same ``Nats-Msg-Id`` and is dropped as a duplicate
  inside the stream's duplicate window (the audit service also dedups by event_id);
- a publish that cannot be acknowledged raises ``UnavailableError``: the caller decides
  (an operation whose policy requires audit must then fail closed).

The stream configuration lives here, once: whichever side starts first (a producer or
the audit service) creates it with the same settings.

Services depend on the ``AuditSink`` protocol, and get an ``AuditPublisher`` in
production and tests alike (tests use a real nats-server).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from google.protobuf.struct_pb2 import NULL_VALUE, Struct, Value
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from opentelemetry import trace

from symbi_common import natsio, subjects
from symbi_common.errors import InvalidArgumentError, SymbiError, UnavailableError
from symbi_common.ids import new_id
from symbi_common.retry import RetryPolicy, retry
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

# Events stay in the stream for this long whether or not the audit service has
# consumed them; the audit service's own storage is the system of record.
STREAM_MAX_AGE_S = 30 * 24 * 3600.0
STREAM_DUPLICATE_WINDOW_S = 600.0
MAX_DETAILS_BYTES = 64 * 1024


def stream_config() -> StreamConfig:
    """The one configuration of the ``AUDIT`` stream (file storage, dedup window, limits retention)."""
    return StreamConfig(
        name=subjects.AUDIT_STREAM,
        subjects=[subjects.AUDIT_EVENTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        duplicate_window=STREAM_DUPLICATE_WINDOW_S,
        max_age=STREAM_MAX_AGE_S,
    )


async def ensure_stream(js: JetStreamContext) -> None:
    await natsio.ensure_stream(js, stream_config())


class AuditSink(Protocol):
    """Where services send audit events."""

    async def emit(self, event: audit_pb2.AuditEvent) -> int:
        """Store the event durably; return its stream sequence (0 when auditing is disabled)."""
        ...


def details_struct(details: Mapping[str, Any] | None) -> Struct:
    """A ``Struct`` from JSON-like data; anything else is an InvalidArgumentError, not a crash."""
    struct = Struct()
    fill_details(struct, details)
    return struct


def fill_details(struct: Struct, details: Mapping[str, Any] | None) -> None:
    """Write JSON-like data into ``struct`` (field by field: several times faster than ``Struct.update``)."""
    if not details:
        return
    try:
        _fill(struct, details)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgumentError(f"audit details are not JSON-like data: {exc}") from None
    if struct.ByteSize() > MAX_DETAILS_BYTES:
        raise InvalidArgumentError(f"audit details exceed {MAX_DETAILS_BYTES // 1024} KiB")


def _fill(struct: Struct, data: Mapping[str, Any]) -> None:
    fields = struct.fields
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, not {type(key).__name__}")
        _set(fields[key], value)


def _set(target: Value, value: Any) -> None:
    if value is None:
        target.null_value = NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, (int, float)):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, Mapping):
        _fill(target.struct_value, value)
        if not value:
            target.struct_value.SetInParent()
    elif isinstance(value, (list, tuple)):
        items = target.list_value
        items.SetInParent()
        for item in value:
            _set(items.values.add(), item)
    else:
        raise TypeError(f"{type(value).__name__} is not JSON-like")


@functools.lru_cache(maxsize=4096)
def event_subject(event_type: str) -> str:
    """The subject of an event type, validated once per type (raises ``InvalidArgumentError``)."""
    return subjects.audit_event(event_type)


_checked_type = event_subject


def build_event(
    event_type: str,
    *,
    source: str,
    agent_id: str = "",
    details: Mapping[str, Any] | None = None,
    outcome: audit_pb2.AuditOutcome.ValueType = audit_pb2.AUDIT_OUTCOME_SUCCESS,
    correlation_id: str = "",
    tenant: str = "",
    data_labels: Iterable[str] = (),
) -> audit_pb2.AuditEvent:
    """A new event with a fresh id, the current time and the current trace id."""
    _checked_type(event_type)
    event = audit_pb2.AuditEvent(
        event_id=new_id(),
        agent_id=agent_id,
        event_type=event_type,
        source=source,
        tenant=tenant,
        correlation_id=correlation_id,
        outcome=outcome,
        data_labels=data_labels,
    )
    fill_details(event.details, details)
    event.timestamp.seconds, event.timestamp.nanos = divmod(time.time_ns(), 1_000_000_000)
    event.trace_id = current_trace_id()
    return event


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" outside a trace."""
    span = trace.get_current_span().get_span_context()
    return f"{span.trace_id:032x}" if span.is_valid else ""


class AuditPublisher:
    """Publishes audit events into JetStream; implements ``AuditSink``."""

    def __init__(
        self,
        js: JetStreamContext,
        source: str,
        *,
        enabled: bool = True,
        timeout_s: float = 5.0,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.js = js
        self.source = source
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.retry_policy = retry_policy or RetryPolicy(deadline_s=timeout_s, max_backoff_s=0.5)
        self._stream_ready = False
        if not enabled:
            log.warning("auditing is disabled ([security].audit_enabled = false): %s records nothing", source)

    async def emit(self, event: audit_pb2.AuditEvent) -> int:
        if not self.enabled:
            return 0
        if not event.event_id or not event.event_type or not event.HasField("timestamp"):
            raise InvalidArgumentError("an audit event needs event_id, event_type and timestamp (use build_event)")
        subject = subjects.audit_event(event.event_type)

        async def attempt() -> int:
            if not self._stream_ready:
                await ensure_stream(self.js)
                self._stream_ready = True
            try:
                return await natsio.publish_durable(
                    self.js, subject, event, msg_id=event.event_id, timeout=self.timeout_s
                )
            except SymbiError:
                self._stream_ready = False  # the stream may be gone: make sure of it on the next try
                raise

        try:
            return await retry(attempt, self.retry_policy, what=f"publish audit event {event.event_type}")
        except SymbiError as exc:
            raise UnavailableError(f"audit event {event.event_id} ({event.event_type}) not stored: {exc}") from exc

    async def record(self, event_type: str, **fields: Any) -> audit_pb2.AuditEvent:
        """Build an event (see ``build_event``) from this publisher's source and emit it."""
        event = build_event(event_type, source=self.source, **fields)
        await self.emit(event)
        return event


EventSource = audit_pb2.AuditEvent | Callable[[], audit_pb2.AuditEvent]


def _in_trace(build: Callable[[], audit_pb2.AuditEvent], trace_id: str) -> Callable[[], audit_pb2.AuditEvent]:
    """A builder whose event carries ``trace_id`` (that of the action), though it is built later, elsewhere."""

    def built() -> audit_pb2.AuditEvent:
        event = build()
        if not event.trace_id:
            event.trace_id = trace_id
        return event

    return built


class AuditBuffer:
    """Audit emission for hot paths: never blocks the caller, never drops silently.

    ``offer`` queues an event, or a zero-argument function that builds one (so the
    cost of building it is off the caller's path; the event gets the trace id current
    at ``offer``, the action's), and returns ``False`` when
    ``capacity`` events are already waiting: the caller must then fail closed. The
    background task ``run`` builds queued events and publishes them into the AUDIT
    stream as ``AuditBatch`` messages on ``symbi.audit.batch`` (up to ``window``
    events and ``MAX_BATCH_BYTES`` each, ``Nats-Msg-Id = batch_id``): one publish and
    one acknowledgement for many events, where per-event publishing cost more than
    the decisions being audited. A batch that is not acknowledged is retried, whole
    and with the same id (the stream drops the duplicate if the first try did land),
    with backoff; while that lasts ``healthy`` is false. ``flush`` (at shutdown)
    waits for the queue to drain. A round starts ``linger_s`` after the first event
    of a quiet spell, so publishing happens after the caller has answered and is
    shared by the events that arrive meanwhile.

    What is still queued when the process is killed is lost; a caller that must not
    lose one event awaits ``AuditPublisher.emit`` instead.
    """

    MAX_BATCH_BYTES = 512 * 1024

    def __init__(
        self,
        js: JetStreamContext,
        *,
        enabled: bool = True,
        capacity: int = 10_000,
        window: int = 512,
        ack_timeout_s: float = 5.0,
        max_backoff_s: float = 2.0,
        linger_s: float = 0.002,
    ) -> None:
        self.js = js
        self.enabled = enabled
        self.capacity = capacity
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.max_backoff_s = max_backoff_s
        self.linger_s = linger_s
        self.published = 0
        self.failures = 0
        self.healthy = True
        self.last_error = ""
        self._queue: deque[EventSource] = deque()
        self._batch: audit_pb2.AuditBatch | None = None  # built, not yet acknowledged
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stream_ready = False

    @property
    def pending(self) -> int:
        return len(self._queue) + (len(self._batch.events) if self._batch is not None else 0)

    def offer(self, event: EventSource) -> bool:
        """Queue one event; False when the buffer is full (the caller fails closed)."""
        if not self.enabled:
            return True
        if self.pending >= self.capacity:
            return False
        if not isinstance(event, audit_pb2.AuditEvent):
            event = _in_trace(event, current_trace_id())
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()
        return True

    async def run(self) -> None:
        """Publish queued events for ever (run it as a supervised background task)."""
        failures_in_a_row = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.linger_s and len(self._queue) < self.window:
                # Let the caller's reply go out first, and let a few more events join this round.
                await asyncio.sleep(self.linger_s)
            while self._queue or self._batch is not None:
                if await self._publish_round():
                    failures_in_a_row = 0
                    continue
                failures_in_a_row += 1
                await asyncio.sleep(min(self.max_backoff_s, 0.05 * 2**failures_in_a_row))
            self._idle.set()

    def _next_batch(self) -> audit_pb2.AuditBatch:
        batch = audit_pb2.AuditBatch(batch_id=new_id())
        size = 0
        while self._queue and len(batch.events) < self.window and size < self.MAX_BATCH_BYTES:
            item = self._queue.popleft()
            try:
                event = item if isinstance(item, audit_pb2.AuditEvent) else item()
            except Exception:  # a bug in a builder: say so loudly, the rest still goes out
                log.exception("could not build an audit event; it is lost")
                self.failures += 1
                continue
            batch.events.append(event)
            size += event.ByteSize()
        return batch

    async def _publish_round(self) -> bool:
        if self._batch is None:
            self._batch = self._next_batch()
        batch = self._batch
        if not batch.events:
            self._batch = None
            return True
        try:
            if not self._stream_ready:
                await ensure_stream(self.js)
                self._stream_ready = True
            await self.js.publish(
                subjects.AUDIT_BATCH,
                batch.SerializeToString(),
                timeout=self.ack_timeout_s,
                headers={natsio.MSG_ID_HEADER: batch.batch_id},
            )
        except Exception as exc:
            self._stream_ready = False  # the stream may be gone: make sure of it on the next round
            self.healthy = False
            self.failures += len(batch.events)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("%d audit events not acknowledged (%s); retrying", len(batch.events), self.last_error)
            return False
        self._batch = None
        self.published += len(batch.events)
        self.healthy = True
        return True

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued event is acknowledged; False if that took longer than ``timeout_s``."""
        if self._idle.is_set():
            return True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.error("%d audit events still unpublished after %.1fs", self.pending, timeout_s)
            return False
        return True
