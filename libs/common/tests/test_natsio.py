"""Request-reply, typed errors, trace propagation and JetStream, on a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from symbi_common import embedded, natsio, telemetry
from symbi_common.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from symbi_common.ids import new_id
from symbi_common.settings import NatsSettings, Settings
from symbi_proto.v1 import common_pb2, health_pb2

pytestmark = pytest.mark.integration


def subject() -> str:
    return f"test.{new_id()}"


async def echo_health(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
    return health_pb2.HealthStatus(service="echo", instance_id=meta.subject)


async def test_request_reply_round_trip(nc: Client) -> None:
    subj = subject()
    await natsio.serve(nc, subj, health_pb2.HealthRequest, echo_health)
    reply = await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)
    assert reply.service == "echo"
    assert reply.instance_id == subj


async def test_typed_error_crosses_the_wire(nc: Client) -> None:
    subj = subject()

    async def missing(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
        raise NotFoundError("agent 42 does not exist", metadata={"agent_id": "42"})

    await natsio.serve(nc, subj, health_pb2.HealthRequest, missing)
    with pytest.raises(NotFoundError, match="agent 42 does not exist") as info:
        await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)
    assert info.value.metadata == {"agent_id": "42"}


async def test_handler_crash_is_an_internal_error_not_a_hang(nc: Client) -> None:
    subj = subject()

    async def crash(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
        raise ZeroDivisionError("oops")

    await natsio.serve(nc, subj, health_pb2.HealthRequest, crash)
    with pytest.raises(InternalError, match="ZeroDivisionError: oops"):
        await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)


async def test_malformed_payload_is_rejected_with_invalid_argument(nc: Client) -> None:
    subj = subject()
    await natsio.serve(nc, subj, common_pb2.ErrorDetail, echo_health)  # type: ignore[arg-type]
    reply = await nc.request(subj, b"\xff\xff\xff garbage", timeout=2)
    with pytest.raises(InvalidArgumentError, match=r"not a valid symbi\.v1\.ErrorDetail"):
        natsio.decode_reply(reply, health_pb2.HealthStatus, subj)


async def test_reply_without_status_header_is_refused(nc: Client) -> None:
    subj = subject()

    async def raw(msg: object) -> None:
        await nc.publish(msg.reply, b"")  # type: ignore[attr-defined]

    await nc.subscribe(subj, cb=raw)
    with pytest.raises(InternalError, match="lacks the Symbi-Status header"):
        await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)


async def test_no_responders_is_unavailable(nc: Client) -> None:
    with pytest.raises(UnavailableError, match="no service is listening"):
        await natsio.request(nc, subject(), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)


async def test_a_responder_that_appears_a_moment_later_is_reached(nc: Client, settings: Settings) -> None:
    """The server may miss a fresh subscription for a few milliseconds: a request asks again briefly."""
    subj = subject()
    other = await natsio.connect(settings.nats, "late-responder")

    async def answer(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
        return health_pb2.HealthStatus(service="late")

    async def subscribe_soon() -> None:
        await asyncio.sleep(0.015)
        await natsio.serve(other, subj, health_pb2.HealthRequest, answer)
        await other.flush()

    try:
        late = asyncio.ensure_future(subscribe_soon())
        reply = await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)
        await late
    finally:
        await other.close()
    assert reply.service == "late"


async def test_slow_handler_is_deadline_exceeded(nc: Client) -> None:
    subj = subject()

    async def slow(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
        await asyncio.sleep(1)
        return health_pb2.HealthStatus()

    await natsio.serve(nc, subj, health_pb2.HealthRequest, slow)
    with pytest.raises(DeadlineExceededError, match="no reply"):
        await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=0.1)


async def test_trace_context_crosses_nats(nc: Client, span_exporter: InMemorySpanExporter) -> None:
    subj = subject()
    seen: list[str] = []

    async def handler(request: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
        seen.append(meta.headers.get("traceparent", ""))
        ctx = trace.get_current_span().get_span_context()
        return health_pb2.HealthStatus(instance_id=f"{ctx.trace_id:032x}")

    await natsio.serve(nc, subj, health_pb2.HealthRequest, handler)
    with telemetry.tracer().start_as_current_span("caller") as caller:
        reply = await natsio.request(nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2)
        caller_trace = f"{caller.get_span_context().trace_id:032x}"
    assert reply.instance_id == caller_trace
    assert seen
    assert caller_trace in seen[0]
    names = {s.name for s in span_exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == caller_trace}
    assert {"caller", f"request {subj}", f"handle {subj}"} <= names


async def test_connect_to_nothing_fails_within_the_deadline() -> None:
    settings = NatsSettings(url="nats://127.0.0.1:1", connect_timeout_s=0.5)
    with pytest.raises(DeadlineExceededError, match="connect to NATS"):
        await natsio.connect(settings, "nobody")


async def test_stream_dedups_by_message_id(nc: Client) -> None:
    js = nc.jetstream()
    name = f"T{new_id().replace('-', '')[:12]}"
    subj = f"dedup.{name}.>"
    config = StreamConfig(name=name, subjects=[subj], duplicate_window=120)
    await natsio.ensure_stream(js, config)
    await natsio.ensure_stream(js, config)  # idempotent
    event = health_pb2.HealthStatus(service="x")
    first = await natsio.publish_durable(js, f"dedup.{name}.a", event, msg_id="same")
    second = await natsio.publish_durable(js, f"dedup.{name}.a", event, msg_id="same")
    third = await natsio.publish_durable(js, f"dedup.{name}.a", event, msg_id="other")
    assert first == second
    assert third == first + 1
    info = await js.stream_info(name)
    assert info.state.messages == 2
    await natsio.ensure_stream(js, StreamConfig(name=name, subjects=[subj, f"more.{name}"]))
    assert sorted((await js.stream_info(name)).config.subjects or []) == sorted([subj, f"more.{name}"])
    await js.delete_stream(name)


async def test_client_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    first = embedded.start_nats(tmp_path / "nats")
    port = int(first.url.rsplit(":", 1)[1])
    nc = await natsio.connect(NatsSettings(url=first.url, connect_timeout_s=5), "reconnecting")
    second: embedded.EmbeddedServer | None = None
    try:
        subj = subject()
        await natsio.serve(nc, subj, health_pb2.HealthRequest, echo_health)
        first.stop(5)
        second = embedded.start_nats(tmp_path / "nats", port=port)
        async with asyncio.timeout(20):
            while True:
                try:  # the subscription is restored on reconnect, so our own request is answered
                    reply = await natsio.request(
                        nc, subj, health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=1
                    )
                    break
                except (UnavailableError, DeadlineExceededError):
                    await asyncio.sleep(0.1)
        assert reply.service == "echo"
    finally:
        await nc.close()
        first.stop(1)
        if second is not None:
            second.stop(5)
