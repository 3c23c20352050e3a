"""The INBOX stream and per-agent inbox consumers: defined once, used by the router and tests.

Direct messages are stored at ``symbi.bus.inbox.<recipient>`` in the ``INBOX`` stream
(work-queue retention: a message leaves the stream once its recipient acknowledges it;
``Nats-Msg-Id`` = message id, so a resent envelope is stored once). Each agent has one
durable pull consumer ``inbox_<agent>`` filtered to its subject: it redelivers after
``ack_wait`` until ``max_deliver`` deliveries, after which the router turns the message
into a dead letter. Per-inbox quotas keep one flooded agent from filling the stream.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from symbi_common import natsio, subjects
from symbi_common.settings import MessagingSettings

DUPLICATE_WINDOW_S = 120.0
ENVELOPE_OVERHEAD_BYTES = 4096


def stream_config(settings: MessagingSettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.INBOX_STREAM,
        subjects=[subjects.BUS_INBOXES],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=settings.inbox_max_age_s,
        max_msgs_per_subject=settings.inbox_max_messages,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msg_size=settings.max_payload_bytes + ENVELOPE_OVERHEAD_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_stream(js: JetStreamContext, settings: MessagingSettings) -> None:
    await natsio.ensure_stream(js, stream_config(settings))


def consumer_config(agent_id: str, settings: MessagingSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.inbox_consumer(agent_id),
        filter_subject=subjects.bus_inbox(agent_id),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.inbox_ack_wait_s,
        max_deliver=settings.inbox_max_deliver,
        max_ack_pending=1000,
    )


async def ensure_consumer(js: JetStreamContext, agent_id: str, settings: MessagingSettings) -> None:
    """Create the agent's inbox consumer (idempotent: an identical one already there is fine)."""
    config = consumer_config(agent_id, settings)
    try:
        await js.add_consumer(subjects.INBOX_STREAM, config, timeout=5)
    except Exception as exc:
        raise natsio.map_error(exc, f"$JS.API.CONSUMER.CREATE.{subjects.INBOX_STREAM}", 5) from exc


async def delete_consumer(js: JetStreamContext, agent_id: str) -> bool:
    """Remove the agent's inbox consumer (termination); False if there was none."""
    try:
        await js.delete_consumer(subjects.INBOX_STREAM, subjects.inbox_consumer(agent_id))
    except nats.js.errors.NotFoundError:
        return False
    return True
