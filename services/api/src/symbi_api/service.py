"""API service bootstrap: FastAPI served by uvicorn inside the service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from symbi_api.app import build_app
from symbi_common.errors import ConfigError
from symbi_common.health import NOT_SERVING, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the service runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"api cannot listen on {host}:{port}: {exc.strerror} (set [api].port or SYMBI_API_PORT)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def setup(ctx: ServiceContext) -> None:
    sock = _bind(ctx.settings.api.host, ctx.settings.api.port)
    host, port = sock.getsockname()[:2]
    app = build_app(ctx.nc, lambda: True)
    server = _EmbeddedUvicorn(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = ctx.tasks.spawn(server.serve(sockets=[sock]), name="uvicorn")

    async def stop() -> None:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, STARTUP_TIMEOUT_S)
        sock.close()

    ctx.stack.push_async_callback(stop)
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while not server.started:
            if task.done():
                raise ConfigError(f"api HTTP server exited during start-up: {task.exception()!r}")
            await asyncio.sleep(0.01)
    ctx.health.endpoints["http"] = f"http://{host}:{port}"

    def http_check() -> CheckResult:
        return (SERVING, f"serving on {host}:{port}") if not task.done() else (NOT_SERVING, "HTTP server stopped")

    ctx.health.add_check("http", http_check)
    log.info("api listening on http://%s:%d (OpenAPI at /docs)", host, port)


SPEC = ServiceSpec(name="api", summary="HTTP API gateway", setup=setup)
