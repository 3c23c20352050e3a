"""Reading what services wrote into JetStream, for assertions (the real stream, no fakes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from symbi_common import subjects
from symbi_proto.v1 import audit_pb2


async def audit_events(nc: Client, event_type: str = ">") -> list[audit_pb2.AuditEvent]:
    """Every event in the AUDIT stream on ``symbi.audit.<event_type>`` (``*``/``>`` allowed), oldest first."""
    js = nc.jetstream(timeout=5)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30)
    wildcard = "*" in event_type.split(".") or event_type.endswith(">")
    subject = subjects.AUDIT_EVENTS.replace(">", event_type) if wildcard else subjects.audit_event(event_type)
    sub = await js.pull_subscribe(subject, stream=subjects.AUDIT_STREAM, config=config)
    events: list[audit_pb2.AuditEvent] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                return events
            for msg in batch:
                event = audit_pb2.AuditEvent()
                event.ParseFromString(msg.data)
                events.append(event)
    finally:
        await sub.unsubscribe()


async def wait_for_audit(
    nc: Client,
    event_type: str,
    match: Callable[[audit_pb2.AuditEvent], bool],
    *,
    count: int = 1,
    timeout_s: float = 10.0,
) -> list[audit_pb2.AuditEvent]:
    """Poll the AUDIT stream until ``count`` matching events are there; fail with what was seen."""
    deadline = time.monotonic() + timeout_s
    found: list[audit_pb2.AuditEvent] = []
    while time.monotonic() < deadline:
        found = [event for event in await audit_events(nc, event_type) if match(event)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} {event_type} audit events, found {len(found)} in {timeout_s}s")


async def delete_stream(nc: Client, name: str) -> None:
    """Remove a stream if it exists (tests that need a fresh one on a shared server)."""
    js = nc.jetstream(timeout=5)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(name)


def details(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    """An event's details as plain Python data."""
    return MessageToDict(event.details)
