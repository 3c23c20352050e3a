"""The one service bootstrap.

A service is a ``ServiceSpec``: a name and an async ``setup(ctx)`` that registers its
handlers, health checks and background tasks on the ``ServiceContext`` it is given.
``ServiceRunner`` does the rest for every service alike:

1. connect to NATS (retrying up to the configured deadline) and JetStream;
2. serve ``/metrics`` and ``/health`` over HTTP and answer health requests on
   ``symbi.health.<service>`` and ``symbi.health.all`` over NATS;
3. run ``setup``; the replica is ready once it returns;
4. on SIGTERM/SIGINT (or ``request_stop``) shut down once, in order: not ready,
   drain subscriptions, let requests in progress finish, close the service's
   resources (``ctx.stack``), cancel
   background tasks, drain NATS, close the HTTP endpoint; each step bounded by the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import CollectorRegistry, Gauge, Info

from symbi_common import __version__, logs, natsio, subjects, telemetry
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.health import DEGRADED, NOT_SERVING, SERVING, CheckResult, HealthRegistry, RecentErrorsHandler
from symbi_common.ids import instance_id as make_instance_id
from symbi_common.opshttp import OpsServer
from symbi_common.settings import Settings
from symbi_common.supervisor import Supervisor
from symbi_proto.v1 import health_pb2

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
CONCURRENT_REQUESTS = 64


class ServiceContext:
    """What a service's ``setup`` is handed: settings, connections, registries, lifetime."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        nc: Client,
        js: JetStreamContext,
        health: HealthRegistry,
        metrics: CollectorRegistry,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.name = name
        self.settings = settings
        self.nc = nc
        self.js = js
        self.health = health
        self.metrics = metrics
        self.stack = stack
        self.tasks = Supervisor(on_failure=lambda task, exc: health.record_error(task, repr(exc)))
        self.request_metrics = natsio.RequestMetrics(metrics)
        self.subscriptions: list[Subscription] = []
        self.inflight = natsio.InFlight(CONCURRENT_REQUESTS)

    @property
    def instance_id(self) -> str:
        return self.health.instance_id

    async def serve(
        self,
        subject: str,
        request_type: type[natsio.Req],
        handler: natsio.Handler[natsio.Req],
        *,
        queue: str = "",
        concurrent: bool = False,
    ) -> Subscription:
        """Answer protobuf requests on ``subject`` with metrics, tracing and typed errors.

        ``concurrent``: handle requests side by side (the handler must be safe for it),
        up to ``CONCURRENT_REQUESTS`` per replica across its concurrent subjects.
        """
        sub = await natsio.serve(
            self.nc,
            subject,
            request_type,
            handler,
            metrics=self.request_metrics,
            queue=queue,
            on_error=lambda subj, exc: self.health.record_error(subj, repr(exc)),
            inflight=self.inflight if concurrent else None,
        )
        self.subscriptions.append(sub)
        return sub

    async def serve_raw(
        self, subject: str, handler: natsio.RawHandler, *, queue: str = "", concurrent: bool = False
    ) -> Subscription:
        """``serve`` for handlers that read the request bytes themselves."""
        sub = await natsio.serve_raw(
            self.nc,
            subject,
            handler,
            metrics=self.request_metrics,
            queue=queue,
            on_error=lambda subj, exc: self.health.record_error(subj, repr(exc)),
            inflight=self.inflight if concurrent else None,
        )
        self.subscriptions.append(sub)
        return sub


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    summary: str
    setup: Callable[[ServiceContext], Awaitable[None]]


class ServiceRunner:
    """Runs one ``ServiceSpec`` in the current event loop."""

    def __init__(
        self,
        spec: ServiceSpec,
        settings: Settings,
        *,
        install_signal_handlers: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.grace_s = grace_s
        self.instance_id = make_instance_id(spec.name)
        self.metrics = CollectorRegistry()
        self.health = HealthRegistry(spec.name, self.instance_id, __version__)
        self.stopped = asyncio.Event()
        self.ops_port = 0
        self.ctx: ServiceContext | None = None
        self._install_signals = install_signal_handlers
        self._ready = False
        self._stack = contextlib.AsyncExitStack()
        self._shutdown: asyncio.Task[None] | None = None
        self._nc: Client | None = None
        self._ops: OpsServer | None = None
        self._up = Gauge("symbi_service_ready", "1 when this replica is ready", registry=self.metrics)
        Info("symbi_build", "Build information", registry=self.metrics).info(
            {"service": spec.name, "version": __version__, "instance": self.instance_id}
        )

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Connect, expose health and metrics, run setup; raises if any step fails."""
        if self._install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        self._ops = OpsServer(self.metrics, self.health, lambda: self._ready)
        host, port = self.settings.telemetry.metrics_host, self.settings.telemetry.metrics_port
        self.ops_port = await self._ops.start(host, port)
        self.health.endpoints["metrics"] = f"http://{host}:{self.ops_port}/metrics"
        self._nc = await natsio.connect(self.settings.nats, f"symbi-{self.spec.name}:{self.instance_id}")
        self.health.add_check("nats", self._nats_check)
        js = self._nc.jetstream(timeout=self.settings.nats.request_timeout_s)
        self.ctx = ServiceContext(self.spec.name, self.settings, self._nc, js, self.health, self.metrics, self._stack)
        for subject in (subjects.health(self.spec.name), subjects.HEALTH_ALL):
            await self.ctx.serve(subject, health_pb2.HealthRequest, self._answer_health)
        await self.spec.setup(self.ctx)
        # Subscriptions are only registered once the server has them: flush before saying ready.
        await self._nc.flush(timeout=math.ceil(self.settings.nats.request_timeout_s))
        self._ready = True
        self._up.set(1)
        log.info("%s ready (instance %s)", self.spec.name, self.instance_id)

    def _nats_check(self) -> CheckResult:
        nc = self._nc
        if nc is None or nc.is_closed:
            return NOT_SERVING, "closed"
        if nc.is_connected:
            return SERVING, f"connected to {nc.connected_url.netloc if nc.connected_url else '?'}"
        return NOT_SERVING, "reconnecting"

    async def _answer_health(self, _: health_pb2.HealthRequest, __: natsio.RequestMeta) -> Message:
        snapshot = await self.health.snapshot()
        if not self._ready:
            snapshot.status = NOT_SERVING if snapshot.status == SERVING else snapshot.status
        return snapshot

    def request_stop(self) -> None:
        if self._shutdown is None:
            log.info("%s stopping", self.spec.name)
            self._shutdown = asyncio.ensure_future(self._do_shutdown())

    async def shutdown(self) -> None:
        """Stop everything once; later calls wait for the first one to finish."""
        self.request_stop()
        assert self._shutdown is not None
        await asyncio.shield(self._shutdown)

    async def _do_shutdown(self) -> None:
        self._ready = False
        self._up.set(0)
        ctx = self.ctx
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if ctx is not None:
            steps.append(("drain subscriptions", lambda: _drain_all(ctx.subscriptions)))
            steps.append(("finish requests in progress", lambda: ctx.inflight.wait(self.grace_s / 2)))
        steps.append(("close service resources", self._stack.aclose))
        if ctx is not None:
            steps.append(("stop background tasks", lambda: ctx.tasks.aclose(self.grace_s / 2)))
        if self._nc is not None:
            steps.append(("drain NATS", self._close_nats))
        if self._ops is not None:
            steps.append(("close ops endpoint", self._ops.close))
        for what, step in steps:
            try:
                await asyncio.wait_for(step(), self.grace_s)
            except Exception as exc:  # keep going: the remaining steps must still run
                log.warning("%s: %s failed during shutdown: %r", self.spec.name, what, exc)
        self.stopped.set()

    async def _close_nats(self) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await nc.drain()
        except Exception:
            await nc.close()

    async def run_until_stopped(self) -> None:
        try:
            await self.start()
        except BaseException:
            await self.shutdown()
            raise
        await self.stopped.wait()


async def _drain_all(subs: Sequence[Subscription]) -> None:
    for sub in subs:
        with contextlib.suppress(Exception):
            await sub.drain()  # type: ignore[no-untyped-call]


def run_service(
    spec: ServiceSpec,
    settings: Settings,
    *,
    span_processors: Sequence[SpanProcessor] = (),
) -> int:
    """Process entry point for ``symbi serve``: configure logging/tracing and run until signalled."""
    runner = ServiceRunner(spec, settings, install_signal_handlers=True)
    logs.configure_logging(
        settings.runtime.log_level, settings.runtime.log_format, service=spec.name, instance=runner.instance_id
    )
    logging.getLogger().addHandler(RecentErrorsHandler(runner.health))
    telemetry.configure_tracing(
        spec.name, runner.instance_id, otlp_endpoint=settings.telemetry.otlp_endpoint, processors=span_processors
    )
    started = time.monotonic()
    try:
        asyncio.run(runner.run_until_stopped())
    except ConfigError as exc:
        log.error("%s cannot start: %s", spec.name, exc)
        return 2
    except SymbiError as exc:
        log.error("%s failed: %s", spec.name, exc)
        return 1
    except KeyboardInterrupt:
        return 130
    log.info("%s stopped after %.1fs", spec.name, time.monotonic() - started)
    return 0


__all__ = ["DEGRADED", "NOT_SERVING", "SERVING", "ServiceContext", "ServiceRunner", "ServiceSpec", "run_service"]
