"""The operations endpoint every service exposes: ``/metrics`` and ``/health``.

A small asyncio HTTP/1.1 server (GET only, one request per connection) so probes
and Prometheus scrapes run in the service's own event loop with no extra threads:

- ``GET /metrics``: Prometheus text format from the service's registry.
- ``GET /health/live``: 200 while the process runs.
- ``GET /health/ready``: 200 when ready (connected, set up), 503 otherwise.
- ``GET /health``: the full ``HealthStatus`` as JSON (200 if ready, else 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from google.protobuf.json_format import MessageToJson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from symbi_common.errors import ConfigError
from symbi_common.health import HealthRegistry, is_ready

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 4096
READ_TIMEOUT_S = 5.0

Response = tuple[int, str, bytes]


class OpsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthRegistry,
        ready: Callable[[], bool],
    ) -> None:
        self._metrics = registry
        self._health = health
        self._ready = ready
        self._server: asyncio.Server | None = None
        self._routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/metrics": self._metrics_page,
            "/health/live": self._live,
            "/health/ready": self._readiness,
            "/health": self._full_health,
        }

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port. A port in use is a ConfigError."""
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for /metrics and /health: {exc.strerror}") from None
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("ops endpoint on http://%s:%d (/metrics, /health)", host, bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            status, ctype, body = await self._dispatch(line)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> Response:
        parts = line.decode("latin-1").split()
        if len(line) > MAX_REQUEST_LINE or len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        if method != "GET":
            return 405, "text/plain", b"only GET is supported\n"
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return 404, "text/plain", b"not found: try /metrics, /health, /health/live, /health/ready\n"
        return await route()

    async def _metrics_page(self) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics)

    async def _live(self) -> Response:
        return 200, "text/plain", b"live\n"

    async def _readiness(self) -> Response:
        if self._ready() and is_ready(await self._health.snapshot()):
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    async def _full_health(self) -> Response:
        snapshot = await self._health.snapshot()
        code = 200 if self._ready() and is_ready(snapshot) else 503
        return code, "application/json", MessageToJson(snapshot).encode()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
