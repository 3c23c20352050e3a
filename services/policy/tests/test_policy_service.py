"""The policy service serves gRPC health, continues callers' traces, and fails closed on unknown calls."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from symbi_testing.checks import health_of
from symbi_testing.fixtures import RunService

from symbi_common import embedded, telemetry
from symbi_common.errors import ConfigError
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_policy.service import POLICY_SERVICE_NAME, SPEC

pytestmark = pytest.mark.integration


async def test_grpc_health_and_trace_propagation(
    run_service: RunService, nc: Client, span_exporter: InMemorySpanExporter
) -> None:
    await run_service(SPEC)
    addr = (await health_of(nc, "policy")).endpoints["grpc"]
    async with grpc.aio.insecure_channel(addr, interceptors=[telemetry.TracingClientInterceptor()]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with telemetry.tracer().start_as_current_span("caller") as caller:
            for name in ("", POLICY_SERVICE_NAME):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=3)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        trace_id = caller.get_span_context().trace_id
    server_spans = [
        s for s in span_exporter.get_finished_spans()
        if s.name == "/grpc.health.v1.Health/Check" and s.context.trace_id == trace_id
    ]  # fmt: skip
    assert len(server_spans) == 2
    assert all(s.parent is not None and s.parent.span_id == caller.get_span_context().span_id for s in server_spans)


async def test_policy_calls_without_an_engine_are_refused(run_service: RunService, nc: Client) -> None:
    await run_service(SPEC)
    addr = (await health_of(nc, "policy")).endpoints["grpc"]
    async with grpc.aio.insecure_channel(addr) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{POLICY_SERVICE_NAME}/Evaluate")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", timeout=3)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_grpc_port_in_use_is_reported(settings: Settings) -> None:
    port = embedded.free_port()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        runner = ServiceRunner(SPEC, settings.with_overrides({"policy.port": port}), grace_s=1)
        with pytest.raises(ConfigError, match=f"policy gRPC cannot listen on 127.0.0.1:{port}"):
            await runner.run_until_stopped()
