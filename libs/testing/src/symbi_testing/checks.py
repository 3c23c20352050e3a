"""Assertions shared by several services' tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from symbi_common import natsio, subjects
from symbi_common.errors import DeadlineExceededError, UnavailableError
from symbi_common.health import SERVING
from symbi_common.service import ServiceRunner, ServiceSpec
from symbi_common.settings import Settings
from symbi_proto.v1 import health_pb2


async def health_of(nc: Client, service: str) -> health_pb2.HealthStatus:
    return await natsio.request(
        nc, subjects.health(service), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=3
    )


def components(status: health_pb2.HealthStatus) -> dict[str, health_pb2.ComponentHealth]:
    return {c.name: c for c in status.components}


async def check_redis_backed_service(spec: ServiceSpec, runner: ServiceRunner, nc: Client, settings: Settings) -> None:
    """A Redis-backed service reports Redis in its health and refuses to start without it."""
    status = await health_of(nc, spec.name)
    assert status.status == SERVING
    assert components(status)["redis"].status == SERVING
    assert runner.ready

    unreachable = settings.with_overrides({"redis.url": "redis://127.0.0.1:1/0", "nats.connect_timeout_s": 0.5})
    broken = ServiceRunner(spec, unreachable, grace_s=1)
    with pytest.raises((UnavailableError, DeadlineExceededError), match="Redis"):
        await broken.run_until_stopped()
    assert broken.stopped.is_set()
    assert not broken.ready


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> float:
    """Poll until ``condition`` holds; return how long it took. Never a fixed sleep."""
    started = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not hold within {timeout_s}s")
        await asyncio.sleep(0.005)


async def register_policies(runner: ServiceRunner, text: str, name: str) -> str:
    """Register policy ``text`` on a running policy service; returns its gRPC address (``policy.addr``)."""
    from symbi_common.policy_client import PolicyClient

    assert runner.ctx is not None
    addr = runner.ctx.health.endpoints["grpc"]
    client = PolicyClient(addr)
    try:
        await client.register(text, name=name)
    finally:
        await client.close()
    return addr
