"""Health of every running replica, collected over NATS.

One ``HealthRequest`` goes to ``symbi.health.all``; every replica of every service
answers on the same inbox. Replies are gathered until ``window_s`` passes or until
every expected service has answered (whichever is first).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg

from symbi_common import subjects, telemetry
from symbi_common.health import is_ready
from symbi_common.natsio import STATUS_HEADER, STATUS_OK
from symbi_proto.v1 import health_pb2


async def collect(
    nc: Client,
    *,
    window_s: float = 1.0,
    expect: Iterable[str] = (),
) -> list[health_pb2.HealthStatus]:
    """Health of every replica that answers within ``window_s``, sorted by service."""
    expected = set(expect)
    replies: dict[str, health_pb2.HealthStatus] = {}
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        if (msg.headers or {}).get(STATUS_HEADER) != STATUS_OK:
            return
        status = health_pb2.HealthStatus()
        with contextlib.suppress(DecodeError):
            status.ParseFromString(msg.data)
            replies[status.instance_id] = status
        if expected and expected <= {s.service for s in replies.values()}:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(
            subjects.HEALTH_ALL, health_pb2.HealthRequest().SerializeToString(), reply=inbox, headers=telemetry.inject()
        )
        await nc.flush(timeout=math.ceil(window_s))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), window_s)
    finally:
        await sub.unsubscribe()
    return sorted(replies.values(), key=lambda s: (s.service, s.instance_id))


async def wait_healthy(
    nc: Client, services: Iterable[str], *, timeout_s: float, poll_s: float = 0.25
) -> dict[str, health_pb2.HealthStatus]:
    """Poll until every named service has a ready replica; returns the latest status of each."""
    wanted = set(services)
    deadline = time.monotonic() + timeout_s
    latest: dict[str, health_pb2.HealthStatus] = {}
    while True:
        for status in await collect(nc, window_s=poll_s, expect=wanted):
            if is_ready(status) or status.service not in latest:
                latest[status.service] = status
        if all(name in latest and is_ready(latest[name]) for name in wanted):
            return latest
        if time.monotonic() >= deadline:
            return latest
