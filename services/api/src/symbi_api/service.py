"""API service bootstrap: connections, the bootstrap admin key, FastAPI served by uvicorn in the service's loop.

Start-up: Redis (keys and rate limits), the policy client (gRPC, watching policy
updates), the audit buffer, the bootstrap admin key, then the HTTP server. Shutdown
(the service runtime's stack, last in first out): stop accepting and finish requests
in flight, flush the audit buffer, close the policy channel and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from symbi_api.app import build_app
from symbi_api.auditing import RequestAuditor
from symbi_api.bootstrap import ensure_admin_key
from symbi_api.guard import Guard
from symbi_api.keys import KeyStore
from symbi_api.runtime import Api
from symbi_common import redisio
from symbi_common.audit_events import AuditBuffer
from symbi_common.errors import ConfigError
from symbi_common.health import DEGRADED, NOT_SERVING, SERVING, CheckResult
from symbi_common.policy_client import PolicyClient
from symbi_common.ratelimit import RedisRateLimiter
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
    # Accepted connections inherit this: without it, uvicorn's separate header and body writes
    # meet Nagle's algorithm and the client's delayed ACK, and every keep-alive response waits ~40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


async def build_api(ctx: ServiceContext) -> tuple[Api, RequestAuditor]:
    """Everything the routes use, connected and registered for shutdown on ``ctx``."""
    settings = ctx.settings
    redis = await redisio.attach(ctx)
    keys = KeyStore(redis)
    limiter = RedisRateLimiter(redis)
    policy = PolicyClient(
        settings.policy.addr,
        timeout_s=settings.policy.decision_timeout_s,
        cache_size=settings.policy.cache_size,
        enforce=settings.security.enforce_policies,
        actor=ctx.instance_id,
    )
    await policy.watch(ctx.nc)
    ctx.stack.push_async_callback(policy.close)
    buffer = AuditBuffer(ctx.js, enabled=settings.security.audit_enabled)
    ctx.tasks.spawn(buffer.run(), name="api-audit")
    ctx.stack.push_async_callback(buffer.flush, 5.0)
    auditor = RequestAuditor(buffer, ctx.instance_id)

    def audit_check() -> CheckResult:
        state = f"{buffer.pending} pending, {buffer.published} published, {auditor.dropped} dropped"
        return (SERVING, state) if buffer.healthy else (DEGRADED, f"audit failing ({buffer.last_error}); {state}")

    ctx.health.add_check("request-audit", audit_check)
    guard = Guard(policy, limiter, enforce=settings.security.enforce_policies)
    return Api(settings, ctx.nc, keys, limiter, policy, guard), auditor


async def setup(ctx: ServiceContext) -> None:
    api, auditor = await build_api(ctx)
    bootstrapped = await ensure_admin_key(api.keys, ctx.settings)
    if bootstrapped is not None and bootstrapped.file is not None:
        ctx.health.endpoints["admin_key_file"] = str(bootstrapped.file)
    sock = _bind(ctx.settings.api.host, ctx.settings.api.port)
    host, port = sock.getsockname()[:2]
    app = build_app(api, registry=ctx.metrics, auditor=auditor)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = _EmbeddedUvicorn(config)
    task = ctx.tasks.spawn(server.serve(sockets=[sock]), name="uvicorn")

    async def stop() -> None:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
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
