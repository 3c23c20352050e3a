"""The hot-path audit buffer: everything offered is stored once, in order, across an outage."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest
from nats.aio.client import Client
from symbi_testing.checks import eventually
from symbi_testing.streams import audit_events, details

from symbi_common import audit_events as ae
from symbi_common import embedded, natsio, telemetry
from symbi_common.ids import new_id
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import audit_pb2

pytestmark = pytest.mark.integration


def event(tag: str, n: int) -> audit_pb2.AuditEvent:
    return ae.build_event(f"test.buffer.{tag}", source="buffer-test", details={"n": n})


async def run_buffer(buffer: ae.AuditBuffer) -> asyncio.Task[None]:
    return asyncio.create_task(buffer.run())


async def test_offered_events_are_stored_once_in_order(nc: Client) -> None:
    buffer = ae.AuditBuffer(nc.jetstream(), window=64)
    task = await run_buffer(buffer)
    tag = new_id()[-8:]
    try:
        for n in range(500):
            assert buffer.offer(functools.partial(event, tag, n))  # built off the caller's path
        assert await buffer.flush(10)
    finally:
        task.cancel()
    stored = await audit_events(nc, f"test.buffer.{tag}")
    assert [int(details(e)["n"]) for e in stored] == list(range(500))
    assert buffer.published == 500
    assert buffer.healthy


async def test_events_built_later_carry_the_trace_of_the_action(nc: Client, span_exporter: object) -> None:
    buffer = ae.AuditBuffer(nc.jetstream())
    tag = new_id()[-8:]
    with telemetry.tracer().start_as_current_span("the action") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        assert buffer.offer(functools.partial(event, tag, 1))  # built outside the span, by the buffer's task
    assert buffer.offer(functools.partial(event, tag, 2))  # offered outside any trace
    task = await run_buffer(buffer)
    try:
        assert await buffer.flush(10)
    finally:
        task.cancel()
    stored = await audit_events(nc, f"test.buffer.{tag}")
    assert [e.trace_id for e in stored] == [trace_id, ""]


async def test_a_full_buffer_refuses_so_callers_can_fail_closed(nc: Client) -> None:
    buffer = ae.AuditBuffer(nc.jetstream(), capacity=3)  # not running: nothing drains it
    tag = new_id()[-8:]
    assert [buffer.offer(event(tag, n)) for n in range(4)] == [True, True, True, False]
    assert buffer.pending == 3
    assert not await buffer.flush(0.1)


async def test_a_disabled_buffer_accepts_and_records_nothing(nc: Client) -> None:
    buffer = ae.AuditBuffer(nc.jetstream(), enabled=False, capacity=1)
    assert all(buffer.offer(event("off", n)) for n in range(5))
    assert buffer.pending == 0


async def test_events_offered_during_an_outage_arrive_after_it(tmp_path: Path) -> None:
    server = embedded.start_nats(tmp_path / "nats")
    port = int(server.url.rsplit(":", 1)[1])
    nc = await natsio.connect(NatsSettings(url=server.url, connect_timeout_s=5), "buffer-outage")
    buffer = ae.AuditBuffer(nc.jetstream(), ack_timeout_s=0.5, max_backoff_s=0.2)
    task = await run_buffer(buffer)
    restarted: embedded.EmbeddedServer | None = None
    try:
        assert buffer.offer(event("outage", 0))
        assert await buffer.flush(5)
        server.stop(5)
        for n in range(1, 21):
            assert buffer.offer(event("outage", n))
        await eventually(lambda: not buffer.healthy, what="the buffer notices the outage")
        assert buffer.pending > 0
        assert buffer.last_error
        restarted = embedded.start_nats(tmp_path / "nats", port=port)
        assert await buffer.flush(20)
        assert buffer.healthy
        stored = await audit_events(nc, "test.buffer.outage")
        assert [int(details(e)["n"]) for e in stored] == list(range(21))
    finally:
        task.cancel()
        await nc.close()
        server.stop(1)
        if restarted is not None:
            restarted.stop(5)
