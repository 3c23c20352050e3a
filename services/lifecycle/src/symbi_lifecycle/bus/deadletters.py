"""Messages that cannot be delivered, kept with their reason on the DEADLETTER stream.

Three ways a message ends here (``symbi.deadletter.messages``, a ``DeadLetter`` each):

- **undeliverable**: its receiver failed to handle it ``inbox_max_deliver`` times. The
  broker announces that with a JetStream advisory; the advisories are captured in the
  ``BUS_ADVISORIES`` stream, so none is lost while no router runs, and a router
  replica takes each one, copies the message to the dead letters and removes it from
  the inbox;
- **refused by its receiver** (bad signature, replay, ...): from the receiver's report;
- **recipient ended**: a terminated agent's inbox is emptied into the dead letters.

Every dead letter is counted (``symbi_message_dead_letters``) and audited.
"""

from __future__ import annotations

import contextlib
import json
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from symbi_common import deadletters, natsio, subjects
from symbi_common.audit_events import AuditBuffer, build_event
from symbi_common.errors import UnavailableError
from symbi_lifecycle.bus.metrics import RouterMetrics
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

ADVISORY_CONSUMER = "router"


def advisory_stream() -> StreamConfig:
    return StreamConfig(
        name=subjects.BUS_ADVISORY_STREAM,
        subjects=[subjects.BUS_MAX_DELIVERIES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600.0,
    )


class DeadLetters:
    def __init__(self, js: JetStreamContext, audit: AuditBuffer, metrics: RouterMetrics, instance_id: str) -> None:
        self.js = js
        self.audit = audit
        self.metrics = metrics
        self.instance_id = instance_id

    async def setup(self) -> None:
        await deadletters.ensure_stream(self.js)
        await natsio.ensure_stream(self.js, advisory_stream())
        try:
            await self.js.add_consumer(
                subjects.BUS_ADVISORY_STREAM,
                ConsumerConfig(durable_name=ADVISORY_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
            )
        except Exception as exc:
            raise natsio.map_error(exc, f"$JS.API.CONSUMER.CREATE.{subjects.BUS_ADVISORY_STREAM}", 5) from exc

    async def park(
        self,
        subject: str,
        payload: bytes,
        reason: str,
        detail: str,
        *,
        attempts: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Keep one message on the DEADLETTER stream; raises ``UnavailableError`` if it cannot."""
        letter = deadletters.letter(
            subject, payload, reason, detail, rejected_by=self.instance_id, headers=headers, attempts=attempts
        )
        try:
            await self.js.publish(subjects.MESSAGE_DEAD_LETTER, letter.SerializeToString(), timeout=5)
        except Exception as exc:
            raise UnavailableError(f"cannot store a dead letter: {exc!r}") from exc
        self.metrics.dead_letters.labels(reason).inc()
        recipient = subject.rsplit(".", 1)[-1]
        details = {"subject": subject, "reason": reason, "detail": detail[:1000], "attempts": attempts}
        if not self.audit.offer(
            lambda: build_event(
                "message.dead_lettered",
                source=self.instance_id,
                agent_id=recipient,
                details=details,
                outcome=audit_pb2.AUDIT_OUTCOME_FAILURE,
            )
        ):
            log.error("audit buffer full: dead letter on %s not recorded", subject)

    async def run(self) -> None:
        """Background task: turn max-deliveries advisories into dead letters, for ever."""
        sub = await self.js.pull_subscribe_bind(durable=ADVISORY_CONSUMER, stream=subjects.BUS_ADVISORY_STREAM)
        try:
            while True:
                try:
                    msgs = await sub.fetch(16, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    try:
                        await self._advisory(msg.data)
                    except UnavailableError as exc:
                        log.warning("advisory not handled yet: %s", exc)
                        await msg.nak(delay=1.0)
                        continue
                    await msg.ack()
        finally:  # a pull subscription left behind would hold up draining the connection
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _advisory(self, data: bytes) -> None:
        try:
            advisory = json.loads(data)
            stream, seq = str(advisory["stream"]), int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable JetStream advisory: %r", data[:200])
            return
        try:
            raw = await self.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return  # acknowledged or removed meanwhile
        except Exception as exc:
            raise UnavailableError(f"cannot read {stream} #{seq}: {exc!r}") from exc
        await self.park(
            raw.subject or "",
            raw.data or b"",
            "undeliverable",
            f"not handled after {deliveries} deliveries",
            attempts=deliveries,
            headers={k: str(v) for k, v in (raw.headers or {}).items()},
        )
        await self._delete(stream, seq)

    async def empty_inbox(self, agent_id: str, reason: str) -> int:
        """Move everything waiting in an agent's inbox to the dead letters (its agent has ended)."""
        subject = subjects.bus_inbox(agent_id)
        moved = 0
        async for raw in natsio.stream_messages(self.js, subjects.INBOX_STREAM, subject):
            await self.park(subject, raw.data or b"", "recipient_ended", reason)
            await self._delete(subjects.INBOX_STREAM, int(raw.seq or 0))
            moved += 1
        return moved

    async def _delete(self, stream: str, seq: int) -> None:
        try:
            await self.js.delete_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            pass
        except Exception as exc:
            log.warning("dead letter copied but %s #%d not removed: %r", stream, seq, exc)
