"""What every HTTP request goes through, outside the routes (an ASGI middleware).

- a request id: the caller's ``X-Request-ID`` when it is sane, else a new one; sent
  back in the header and in every error body;
- a server span continuing the caller's ``traceparent``, named by the route template,
  so NATS requests and gRPC calls made while answering are its children;
- the body limit: a declared ``Content-Length`` over ``[api].max_body_bytes`` is
  refused with 413 before anything is read, and a body that grows past it while
  being read (chunked) is refused with 413 too;
- fail closed on audit: a mutating request is refused (503) while the audit buffer
  is full, before it can change anything;
- Prometheus metrics (requests by method, route template and status; latency; in
  flight), one JSON access log line, and the ``on_done`` hook (the audit record).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from symbi_api.problems import REQUEST_ID_HEADER, error_response
from symbi_common import telemetry
from symbi_common.ids import new_id

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNMATCHED = "unmatched"


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "symbi_api_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "symbi_api_request_seconds",
            "HTTP request latency (to the end of the response)",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0),
        )
        self.in_flight = Gauge("symbi_api_requests_in_flight", "HTTP requests being answered", registry=registry)


@dataclass(slots=True)
class Exchange:
    """One finished request, for the audit record and the access log."""

    request_id: str
    method: str
    path: str
    route: str
    status: int
    seconds: float
    state: dict[str, Any] = field(default_factory=dict)
    path_params: dict[str, Any] = field(default_factory=dict)


class HttpLayer:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: ApiMetrics,
        on_done: Callable[[Exchange], None] = lambda exchange: None,
        audit_has_room: Callable[[], bool] = lambda: True,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.on_done = on_done
        self.audit_has_room = audit_has_room

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get(REQUEST_ID_HEADER.lower(), "")
        request_id = given if _REQUEST_ID.fullmatch(given) else new_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        method: str = scope["method"]
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                names = {name.lower() for name, _ in message.get("headers", ())}
                if b"x-request-id" not in names:
                    message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        token = otel_context.attach(telemetry.extract(headers))
        try:
            with telemetry.tracer().start_as_current_span(f"HTTP {method}", kind=trace.SpanKind.SERVER) as span:
                try:
                    refusal = self._refusal(headers, method, request_id)
                    if refusal is not None:
                        state["error_code"] = refusal[1]
                        await refusal[0](scope, receive, send_with_id)
                    else:
                        await self.app(scope, self._limited(receive), send_with_id)
                except Exception as exc:
                    log.error("unhandled error on %s %s: %r", method, scope.get("path", ""), exc, exc_info=exc)
                    state["error_code"] = "internal"
                    if status == 0:
                        reply = error_response(500, "internal", "internal error; see the API logs", request_id)
                        await reply(scope, receive, send_with_id)
                route = _route_of(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                exchange = Exchange(
                    request_id,
                    method,
                    scope.get("path", ""),
                    route,
                    status,
                    time.perf_counter() - started,
                    state,
                    dict(scope.get("path_params") or {}),
                )
                self._finish(exchange)
        finally:
            otel_context.detach(token)
            self.metrics.in_flight.dec()

    def _refusal(self, headers: dict[str, str], method: str, request_id: str) -> tuple[ASGIApp, str] | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            message = f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}"
            return error_response(413, "payload_too_large", message, request_id), "payload_too_large"
        if method in MUTATING and not self.audit_has_room():
            message = "the audit trail cannot take more records right now; nothing was changed, try again"
            return error_response(503, "unavailable", message, request_id), "unavailable"
        return None

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        return counted

    def _finish(self, exchange: Exchange) -> None:
        self.metrics.requests.labels(exchange.method, exchange.route, str(exchange.status)).inc()
        self.metrics.latency.labels(exchange.method, exchange.route).observe(exchange.seconds)
        caller = exchange.state.get("caller")
        log.info(
            "%s %s -> %d in %.1f ms",
            exchange.method,
            exchange.path,
            exchange.status,
            exchange.seconds * 1000,
            extra={
                "request_id": exchange.request_id,
                "route": exchange.route,
                "status": exchange.status,
                "key_id": getattr(caller, "key_id", ""),
            },
        )
        try:
            self.on_done(exchange)
        except Exception as exc:  # the response is out; say so loudly
            log.error("recording request %s failed: %r", exchange.request_id, exc)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
