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
    """Every event in the AUDIT stream of ``event_type`` (``*``/``>`` wildcards allowed), oldest first.

    Events published one by one (on ``symbi.audit.<event_type>``) and inside
    ``AuditBatch`` messages (on ``symbi.audit.batch``) are both returned.
    """
    js = nc.jetstream(timeout=5)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30)
    try:
        sub = await js.pull_subscribe(subjects.AUDIT_EVENTS, stream=subjects.AUDIT_STREAM, config=config)
    except nats.js.errors.NotFoundError:
        return []  # no stream: nothing was ever audited
    events: list[audit_pb2.AuditEvent] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                return [event for event in events if _type_matches(event.event_type, event_type)]
            for msg in batch:
                if msg.subject == subjects.AUDIT_BATCH:
                    events.extend(audit_pb2.AuditBatch.FromString(msg.data).events)
                else:
                    events.append(audit_pb2.AuditEvent.FromString(msg.data))
    finally:
        await sub.unsubscribe()


def _type_matches(event_type: str, pattern: str) -> bool:
    """NATS subject matching of dotted types: ``*`` one token, ``>`` the rest."""
    have, want = event_type.split("."), pattern.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]):
            return False
    return len(have) == len(want)


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
