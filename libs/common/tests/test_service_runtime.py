"""The service bootstrap on a real nats-server: health over NATS and HTTP, metrics, shutdown."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from symbi_testing.fixtures import RunService

from symbi_common import fleet, natsio, subjects
from symbi_common.errors import ConfigError, InternalError
from symbi_common.health import DEGRADED, SERVING
from symbi_common.service import ServiceContext, ServiceRunner, ServiceSpec
from symbi_common.settings import Settings
from symbi_proto.v1 import health_pb2

pytestmark = pytest.mark.integration


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def setup_widget(ctx: ServiceContext) -> None:
    ctx.health.add_check("widget", lambda: (DEGRADED, "half the widgets are out"))
    ctx.health.endpoints["widget"] = "tcp://widget"


WIDGET = ServiceSpec("widget", "a test service", setup_widget)


async def test_health_over_nats_and_http(run_service: RunService, nc: Client) -> None:
    runner = await run_service(WIDGET)
    status = await natsio.request(
        nc, subjects.health("widget"), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2
    )
    assert status.service == "widget"
    assert status.instance_id == runner.instance_id
    assert status.status == DEGRADED  # the worst component wins
    components = {c.name: c for c in status.components}
    assert components["nats"].status == SERVING
    assert components["widget"].detail == "half the widgets are out"
    assert status.resources.memory_rss_bytes > 0
    assert status.resources.threads >= 1
    assert status.endpoints["widget"] == "tcp://widget"
    assert status.endpoints["metrics"].endswith(f":{runner.ops_port}/metrics")

    code, body = await http_get(runner.ops_port, "/health/ready")
    assert code == 200
    assert body == "ready\n"
    code, body = await http_get(runner.ops_port, "/health")
    assert code == 200
    assert '"widget"' in body
    code, _ = await http_get(runner.ops_port, "/nope")
    assert code == 404


async def test_metrics_count_requests(run_service: RunService, nc: Client) -> None:
    runner = await run_service(WIDGET)
    for _ in range(3):
        await natsio.request(
            nc, subjects.health("widget"), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2
        )
    code, body = await http_get(runner.ops_port, "/metrics")
    assert code == 200
    assert "symbi_service_ready 1.0" in body
    assert 'symbi_nats_requests_total{outcome="ok",subject="symbi.health.widget"} 3.0' in body
    assert 'symbi_build_info{instance="' in body


async def test_broadcast_health_reaches_every_replica(run_service: RunService, nc: Client) -> None:
    first = await run_service(WIDGET)
    second = await run_service(WIDGET)
    replies = await fleet.collect(nc, window_s=0.5)
    instances = {s.instance_id for s in replies if s.service == "widget"}
    assert {first.instance_id, second.instance_id} <= instances


async def test_shutdown_is_idempotent_and_stops_answering(settings: Settings, nc: Client) -> None:
    runner = ServiceRunner(WIDGET, settings, grace_s=2)
    await runner.start()
    port = runner.ops_port
    await asyncio.gather(runner.shutdown(), runner.shutdown())
    await runner.shutdown()
    assert runner.stopped.is_set()
    assert not runner.ready
    with pytest.raises(OSError):
        await http_get(port, "/health/live")
    replies = await fleet.collect(nc, window_s=0.3)
    assert runner.instance_id not in {s.instance_id for s in replies}


async def test_failed_setup_raises_and_cleans_up(settings: Settings) -> None:
    closed: list[str] = []

    async def broken(ctx: ServiceContext) -> None:
        ctx.stack.callback(lambda: closed.append("resource"))
        raise ConfigError("the widget key is missing")

    runner = ServiceRunner(ServiceSpec("broken", "fails", broken), settings, grace_s=2)
    with pytest.raises(ConfigError, match="widget key"):
        await runner.run_until_stopped()
    assert closed == ["resource"]
    assert runner.stopped.is_set()


async def test_ops_port_in_use_is_a_config_error(run_service: RunService, settings: Settings) -> None:
    first = await run_service(WIDGET)
    clash = settings.with_overrides({"telemetry.metrics_port": first.ops_port})
    runner = ServiceRunner(WIDGET, clash, grace_s=1)
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.ops_port}"):
        await runner.run_until_stopped()


async def test_background_task_failure_shows_in_health(run_service: RunService, nc: Client) -> None:
    async def setup(ctx: ServiceContext) -> None:
        async def fail() -> None:
            raise InternalError("disk on fire")

        ctx.tasks.spawn(fail(), name="janitor")

    await run_service(ServiceSpec("flaky", "fails in background", setup))
    await asyncio.sleep(0.05)
    status = await natsio.request(
        nc, subjects.health("flaky"), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2
    )
    assert any(e.component == "janitor" and "disk on fire" in e.message for e in status.recent_errors)
