"""Shared pytest fixtures: real servers on free ports, started once, always cleaned up.

- ``nats_url``: a ``nats-server`` with JetStream (session scope), or ``--nats-url``.
- ``redis_url``: Redis/Valkey (session scope), or ``--redis-url``.
- ``settings``: Settings wired to those servers, state under ``tmp_path``, every port 0.
- ``nc``: a connected NATS client for one test.
- ``span_exporter``: every span this test process records, in memory.
- ``run_service``: start a ``ServiceSpec`` in-process with the real bootstrap; stopped after the test.
- ``fresh_policy_log``: an empty POLICY stream for the test, and none left behind.
- ``fresh_audit_streams``: empty AUDIT and DEADLETTER streams and no writer lease, before and after.
- ``fresh_redis``: an empty Redis database for the test, and none of its keys left behind.
- ``secured_nats``: a second ``nats-server`` (session scope) with operator-mode (JWT)
  authorization: services connect with ``service_creds``, agents with users issued by
  ``issuer`` (``issuer_file`` for the lifecycle service).

- ``qdrant_url``: a Qdrant server for the context tests, or "" for local mode.

External servers: ``--nats-url``/``--redis-url``/``--qdrant-url`` or ``SYMBI_TEST_NATS_URL``/
``SYMBI_TEST_REDIS_URL``/``SYMBI_TEST_QDRANT_URL`` (``QDRANT_URL`` works too).
Every test has a time cap (``timeout`` in pytest config).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from symbi_common import embedded, natsauth, natsio, subjects
from symbi_common.service import ServiceRunner, ServiceSpec
from symbi_common.settings import Settings
from symbi_testing.streams import delete_stream

RunService = Callable[..., Awaitable[ServiceRunner]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("symbi")
    group.addoption("--nats-url", default=os.environ.get("SYMBI_TEST_NATS_URL", ""), help="use this NATS server")
    group.addoption("--redis-url", default=os.environ.get("SYMBI_TEST_REDIS_URL", ""), help="use this Redis server")
    group.addoption(
        "--qdrant-url",
        default=os.environ.get("SYMBI_TEST_QDRANT_URL") or os.environ.get("QDRANT_URL", ""),
        help="run the Qdrant tests against this server (default: Qdrant local mode in the test's temp dir)",
    )


def _server(
    request: pytest.FixtureRequest,
    option: str,
    start: Callable[[Path], embedded.EmbeddedServer],
    data_dir: Path,
) -> Iterator[str]:
    external = str(request.config.getoption(option))
    if external:
        yield external
        return
    server = start(data_dir)
    try:
        yield server.url
    finally:
        server.stop(5)


@pytest.fixture(scope="session")
def nats_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server(request, "--nats-url", embedded.start_nats, tmp_path_factory.mktemp("nats"))


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server(request, "--redis-url", embedded.start_redis, tmp_path_factory.mktemp("redis"))


@dataclass(frozen=True)
class SecuredNats:
    url: str
    authority: natsauth.BrokerAuthority
    service_creds: Path
    issuer_file: Path

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this server, with service credentials and the agent-credential issuer."""
        return base.with_overrides(
            {"nats.url": self.url, "nats.credentials": self.service_creds, "messaging.issuer_file": self.issuer_file}
        )


@pytest.fixture(scope="session")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    base = tmp_path_factory.mktemp("secured-nats")
    authority = natsauth.BrokerAuthority.load_or_create(base / "auth")
    server = embedded.start_nats(base / "nats", config=authority.server_config())
    creds = natsauth.write_creds(base / "auth" / "service.creds", authority.service_creds("pytest-services"))
    issuer = authority.issuer.to_file(base / "auth" / "issuer.json")
    try:
        yield SecuredNats(server.url, authority, creds, issuer)
    finally:
        server.stop(5)


@pytest.fixture(scope="session")
def qdrant_url(request: pytest.FixtureRequest) -> str:
    """A Qdrant server's URL (``--qdrant-url``, ``SYMBI_TEST_QDRANT_URL`` or ``QDRANT_URL``), or "" for local mode."""
    return str(request.config.getoption("--qdrant-url"))


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Install one in-memory exporter on the process's tracer provider (set once per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def make_settings(state_dir: Path, nats_url: str, redis_url: str) -> Settings:
    """Settings for tests: real servers, state in ``state_dir``, every listening port picked free."""
    return Settings.model_validate(
        {
            "runtime": {"state_dir": state_dir, "log_level": "DEBUG"},
            "nats": {"url": nats_url, "connect_timeout_s": 5.0, "request_timeout_s": 5.0},
            "redis": {"url": redis_url},
            "api": {"port": 0},
            "policy": {"port": 0},
            "telemetry": {"metrics_port": 0},
        }
    )


@pytest.fixture
def settings(tmp_path: Path, nats_url: str, redis_url: str) -> Settings:
    return make_settings(tmp_path / "state", nats_url, redis_url)


@pytest_asyncio.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    client = await natsio.connect(settings.nats, "pytest")
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def run_service(settings: Settings) -> AsyncIterator[RunService]:
    runners: list[ServiceRunner] = []

    async def start(spec: ServiceSpec, custom: Settings | None = None) -> ServiceRunner:
        runner = ServiceRunner(spec, custom or settings, grace_s=3.0)
        runners.append(runner)
        await runner.start()
        return runner

    try:
        yield start
    finally:
        for runner in reversed(runners):
            await runner.shutdown()


@pytest_asyncio.fixture
async def fresh_policy_log(nc: Client) -> AsyncIterator[None]:
    """The NATS server is shared by the session: give this test an empty policy log, and leave none."""
    await delete_stream(nc, subjects.POLICY_STREAM)
    yield
    await delete_stream(nc, subjects.POLICY_STREAM)


AUDIT_TEST_STREAMS = (subjects.AUDIT_STREAM, "DEADLETTER", "KV_symbi_audit_writer")


@pytest_asyncio.fixture
async def fresh_audit_streams(nc: Client) -> AsyncIterator[None]:
    """Audit tests count what is in the streams: give each empty ones, and leave none."""
    for name in AUDIT_TEST_STREAMS:
        await delete_stream(nc, name)
    yield
    for name in AUDIT_TEST_STREAMS:
        await delete_stream(nc, name)


@pytest_asyncio.fixture
async def fresh_redis(redis_url: str) -> AsyncIterator[None]:
    """Services keep their state in Redis, which the session shares: empty it around the test."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        await client.flushdb()
        yield
        await client.flushdb()
    finally:
        await client.aclose()
