"""The writer: JetStream in, log out, nothing lost, nothing twice.

A durable pull consumer (``audit-writer``, explicit acknowledgement, acknowledge-all)
reads the AUDIT stream in order. Each fetched batch is parsed and validated
(``validate.py``); rejected payloads go to the DEADLETTER stream with the reason,
and are counted; events already in the log (a redelivery after a crash between
write and acknowledgement) or twice in the batch are skipped; the rest are appended
in one durable step. Only then is the batch acknowledged — up to its last message,
so a crash at any point means redelivery, and redelivery means deduplication, never
loss. Events published while no writer runs wait in the stream.

After each append the stored events are published on ``symbi.auditlog.appended``
(a live feed, best effort) and new checkpoints on ``symbi.auditlog.checkpoint``
(for witnesses). The writer runs only while it holds the writer lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge

from symbi_audit.lease import WriterLease
from symbi_audit.log import AuditLog
from symbi_audit.validate import Rejected, parse_message
from symbi_common import audit_events, deadletters, natsio, subjects
from symbi_common.errors import UnavailableError
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

DURABLE = "audit-writer"
DEADLETTER_STREAM = deadletters.STREAM


@dataclass(frozen=True, slots=True)
class WriterOptions:
    batch_size: int = 1000
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.appended = Counter("symbi_audit_events_appended", "Events appended to the log", registry=registry)
        self.duplicates = Counter("symbi_audit_duplicates", "Redelivered events skipped", registry=registry)
        self.dead_letters = Counter(
            "symbi_audit_dead_letters", "Payloads refused to the dead-letter stream", registry=registry
        )
        self.size = Gauge("symbi_audit_log_size", "Events in the log", registry=registry)
        self.writer = Gauge("symbi_audit_writer", "1 while this replica is the writer", registry=registry)
        self.chain_ok = Gauge(
            "symbi_audit_chain_verified",
            "1: the last verification of the whole log succeeded; 0: a verification failed; NaN: none yet",
            registry=registry,
        )
        self.chain_ok.set(math.nan)
        self.verifications = Counter(
            "symbi_audit_verifications",
            "Verifications of the log from its files, by result",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.verifications.labels(result)
        self.verified_at = Gauge(
            "symbi_audit_last_verification_timestamp_seconds",
            "When the log was last verified (Unix time)",
            registry=registry,
        )
        self.verified_events = Gauge(
            "symbi_audit_verified_events", "Events covered by the last verification", registry=registry
        )

    def verified(self, result: audit_pb2.VerifyResponse, *, whole_log: bool) -> None:
        """Record a verification: a failure anywhere breaks the chain status; only a whole-log success mends it."""
        self.verifications.labels("ok" if result.ok else "failed").inc()
        self.verified_at.set(time.time())
        self.verified_events.set(result.events_checked)
        if not result.ok:
            self.chain_ok.set(0)
        elif whole_log:
            self.chain_ok.set(1)


class AuditWriter:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        log_factory: Callable[[], AuditLog],
        lease: WriterLease,
        metrics: AuditMetrics,
        *,
        instance_id: str,
        options: WriterOptions | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.log_factory = log_factory
        self.lease = lease
        self.metrics = metrics
        self.instance_id = instance_id
        self.options = options or WriterOptions()
        self.log: AuditLog | None = None
        self.on_log_change: Callable[[AuditLog | None], None] = lambda _log: None
        self.on_error: Callable[[str, str], None] = lambda _component, _message: None

    async def setup_streams(self) -> None:
        await audit_events.ensure_stream(self.js)
        await deadletters.ensure_stream(self.js)

    async def run(self) -> None:
        """Background task: compete for the lease; while holding it, write; after a failure, try again."""
        while True:
            if not self.lease.held and not await self.lease.try_acquire():
                await asyncio.sleep(self.lease.ttl_s / 3)
                continue
            try:
                await self._write_while_leased()
            except Exception as exc:  # disk full, NATS gone: nothing was acknowledged; retry after a pause
                log.exception("audit writer stopped")
                self.on_error("writer", repr(exc))
                await asyncio.sleep(1.0)
            finally:
                self._close_log()
                await self.lease.release()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop writing: the current batch finishes or is left unacknowledged, the log closes."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def rotate(self, request: audit_pb2.RotateSigningKeyRequest, _: natsio.RequestMeta) -> audit_pb2.SigningKey:
        """``symbi.auditq.rotate``: only the writer subscribes, while it writes."""
        if self.log is None or not self.lease.valid():
            raise UnavailableError("this replica is no longer the audit writer")
        reason = request.reason or "rotation requested"
        if request.requested_by:
            reason = f"{reason} (requested by {request.requested_by})"
        before = len(self.log.checkpoints)
        _old, new, _event = self.log.rotate_key(reason)
        for checkpoint in self.log.checkpoints[before:]:
            await self._announce_checkpoint(checkpoint)
        log.info("audit signing key rotated to %s", new.key_id)
        return new.message()

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
            self.metrics.writer.set(0)
            self.on_log_change(None)

    async def _write_while_leased(self) -> None:
        self.log = await asyncio.to_thread(self.log_factory)
        self.metrics.writer.set(1)
        self.metrics.size.set(self.log.size)
        self.on_log_change(self.log)
        for checkpoint in self.log.checkpoints[-1:]:
            await self._announce_checkpoint(checkpoint)
        config = ConsumerConfig(
            durable_name=DURABLE,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.options.ack_wait_s,
            max_ack_pending=-1,
        )
        sub = await self.js.pull_subscribe(
            subjects.AUDIT_EVENTS, durable=DURABLE, stream=subjects.AUDIT_STREAM, config=config
        )
        rotate = await natsio.serve(self.nc, subjects.AUDIT_ROTATE, audit_pb2.RotateSigningKeyRequest, self.rotate)
        try:
            while self.lease.valid():
                try:
                    msgs = await sub.fetch(self.options.batch_size, timeout=self.options.fetch_timeout_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    await self._checkpoint_if_due()
                    continue
                if not self.lease.valid():
                    return  # unacknowledged: the next writer gets them again
                await self.handle(msgs)
        finally:
            for subscription in (rotate, sub):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def handle(self, msgs: list[Msg]) -> list[audit_pb2.AuditEvent]:
        """Validate, deduplicate, append, then acknowledge the whole batch."""
        assert self.log is not None
        accepted: list[audit_pb2.AuditEvent] = []
        for msg in msgs:
            events, rejected = parse_message(msg.subject, msg.data)
            for item in rejected:
                await self._dead_letter(msg, item)
            accepted.extend(events)
        seen = self.log.known(e.event_id for e in accepted)
        fresh = []
        for event in accepted:
            if event.event_id in seen:
                self.metrics.duplicates.inc()
                continue
            seen.add(event.event_id)
            fresh.append(event)
        before = len(self.log.checkpoints)
        stored = self.log.append(fresh)
        if msgs:
            await msgs[-1].ack()  # acknowledge-all: everything up to here is durable
        self.metrics.appended.inc(len(stored))
        self.metrics.size.set(self.log.size)
        for part in _feed_parts(stored):
            await self._publish(subjects.AUDIT_APPENDED, part.SerializeToString())
        for checkpoint in self.log.checkpoints[before:]:
            await self._announce_checkpoint(checkpoint)
        return stored

    async def _checkpoint_if_due(self) -> None:
        if self.log is not None and self.log.checkpoint_due():
            await self._announce_checkpoint(self.log.checkpoint())

    async def _announce_checkpoint(self, checkpoint: audit_pb2.Checkpoint) -> None:
        await self._publish(subjects.AUDIT_CHECKPOINT_FEED, checkpoint.SerializeToString())

    async def _publish(self, subject: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
        except Exception as exc:  # the feed is best effort; the log is the record
            log.debug("cannot publish on %s: %r", subject, exc)

    async def _dead_letter(self, msg: Msg, rejected: Rejected) -> None:
        letter = deadletters.letter(
            msg.subject,
            rejected.payload,
            "invalid_argument",
            rejected.reason,
            rejected_by=self.instance_id,
            headers={k: str(v) for k, v in (msg.headers or {}).items()},
            attempts=msg.metadata.num_delivered if msg.metadata else 1,
        )
        log.warning("audit payload on %s refused: %s", msg.subject, rejected.reason)
        self.metrics.dead_letters.inc()
        await self.js.publish(subjects.AUDIT_DEAD_LETTER, letter.SerializeToString(), timeout=5)


FEED_BYTES = 256 * 1024  # well under NATS's default 1 MiB max payload


def _feed_parts(events: list[audit_pb2.AuditEvent]) -> list[audit_pb2.AuditBatch]:
    """The appended events as live-feed messages of bounded size."""
    parts: list[audit_pb2.AuditBatch] = []
    size = 0
    for event in events:
        if not parts or size + event.ByteSize() > FEED_BYTES:
            parts.append(audit_pb2.AuditBatch())
            size = 0
        parts[-1].events.append(event)
        size += event.ByteSize()
    return parts
