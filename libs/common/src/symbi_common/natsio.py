"""NATS helpers: connect with retry, typed protobuf request-reply, JetStream streams.

Wire convention for request-reply: the request body is a protobuf message; the
reply carries the header ``Symbi-Status`` = ``ok`` with the response message as
body, or the error code with a ``symbi.v1.ErrorDetail`` body. ``traceparent``
travels in the headers both ways. NATS failures are mapped to typed errors here
and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client, RawCredentials
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StreamConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_common import telemetry
from symbi_common.errors import (
    ConfigError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    SymbiError,
    UnavailableError,
    from_detail,
    from_exception,
)
from symbi_common.retry import RetryPolicy, retry
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import common_pb2

log = logging.getLogger(__name__)

STATUS_HEADER = "Symbi-Status"
STATUS_OK = "ok"
MSG_ID_HEADER = "Nats-Msg-Id"
STREAM_NAME_IN_USE = 10058  # JetStream API error code

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(slots=True)
class ConnectionEvents:
    """Callbacks a caller may pass to hear about the connection's state."""

    on_disconnect: Callable[[], None] = lambda: None
    on_reconnect: Callable[[], None] = lambda: None
    on_error: Callable[[BaseException], None] = lambda exc: None


async def connect(
    settings: NatsSettings,
    name: str,
    events: ConnectionEvents | None = None,
    *,
    credentials: str | None = None,
    inbox_prefix: str | None = None,
) -> Client:
    """Connect to NATS, retrying until ``connect_timeout_s``; reconnect forever afterwards.

    Authentication: ``credentials`` (the text of a ``.creds`` file), else the file in
    ``settings.credentials``, else none. A refused authentication is not retried.
    ``inbox_prefix``: reply subjects under this prefix (agents may only use their own).
    """
    ev = events or ConnectionEvents()
    auth: dict[str, object] = {}
    if credentials is not None:
        auth["user_credentials"] = RawCredentials(credentials)
    elif settings.credentials is not None:
        if not settings.credentials.is_file():
            raise ConfigError(f"[nats].credentials: no such file {settings.credentials}")
        auth["user_credentials"] = str(settings.credentials)
    if inbox_prefix is not None:
        auth["inbox_prefix"] = inbox_prefix

    refused: list[str] = []  # authorization errors while connecting: not worth retrying

    async def error_cb(exc: Exception) -> None:
        if not connected and "authorization" in str(exc).lower():
            refused.append(str(exc))
            return
        log.warning("nats error: %s", exc)
        ev.on_error(exc)

    connected: list[Client] = []  # the client, once made: lets the callback tell a close from a loss

    async def disconnected_cb() -> None:
        if connected and connected[0].is_closed:
            log.debug("nats connection closed")
            return
        log.warning("nats disconnected")
        ev.on_disconnect()

    async def reconnected_cb() -> None:
        log.info("nats reconnected")
        ev.on_reconnect()

    async def attempt() -> Client:
        # nats-py retries a failed *initial* connect forever when max_reconnect_attempts is -1,
        # so the first connect tries each server once; our retry policy owns the deadline.
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=settings.servers,
                    name=name,
                    connect_timeout=min(2.0, settings.connect_timeout_s),
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=error_cb,
                    disconnected_cb=disconnected_cb,
                    reconnected_cb=reconnected_cb,
                    **auth,
                ),
                timeout=settings.connect_timeout_s,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError, nats.errors.Error) as exc:
            if refused or "authorization" in str(exc).lower():
                raise PermissionDeniedError(
                    f"NATS at {settings.url} refused the credentials ({(refused or [str(exc)])[-1]})"
                ) from None
            raise UnavailableError(f"cannot reach NATS at {settings.url}: {exc}") from exc
        nc.options["max_reconnect_attempts"] = -1  # once connected, reconnect for ever
        nc.options["reconnect_time_wait"] = 0.5
        connected[:] = [nc]
        return nc

    policy = RetryPolicy(deadline_s=settings.connect_timeout_s, max_backoff_s=1.0)
    return await retry(attempt, policy, what=f"connect to NATS at {settings.url}")


def map_error(exc: BaseException, subject: str, timeout: float) -> SymbiError:
    if isinstance(exc, nats.errors.NoRespondersError):
        return UnavailableError(f"no service is listening on {subject}")
    if isinstance(exc, (nats.errors.TimeoutError, TimeoutError)):
        return DeadlineExceededError(f"no reply on {subject} within {timeout:.2f}s")
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)):
        return UnavailableError(f"NATS connection is closed; cannot use {subject}")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return InvalidArgumentError(f"payload for {subject} exceeds the server's max payload")
    return from_exception(exc)


NO_RESPONDER_RETRIES = (0.01, 0.02, 0.04)
"""Pauses before asking again when the server says nobody listens. A subscription the
server has acknowledged can still be missed for a few milliseconds by a publish from
another connection (seen with nats-server 2.x and queue groups, about one time in fifty
right after a service starts); a service that is really down costs 70 ms more to report."""


async def request(
    nc: Client,
    subject: str,
    message: Message,
    response_type: type[Resp],
    *,
    timeout: float,
) -> Resp:
    """Send a protobuf request and return the typed reply, or raise the typed error."""
    with telemetry.tracer().start_as_current_span(f"request {subject}", kind=trace.SpanKind.CLIENT):
        payload = message.SerializeToString()
        deadline = time.monotonic() + timeout
        for pause in (*NO_RESPONDER_RETRIES, None):
            try:
                left = max(0.001, deadline - time.monotonic())
                reply = await nc.request(subject, payload, timeout=left, headers=telemetry.inject())
                break
            except nats.errors.NoRespondersError as exc:
                if pause is None or time.monotonic() + pause >= deadline:
                    raise map_error(exc, subject, timeout) from exc
                await asyncio.sleep(pause)
            except Exception as exc:
                raise map_error(exc, subject, timeout) from exc
        return decode_reply(reply, response_type, subject)


def decode_reply(reply: Msg, response_type: type[Resp], subject: str) -> Resp:
    status = (reply.headers or {}).get(STATUS_HEADER, "")
    if status != STATUS_OK:
        detail = common_pb2.ErrorDetail()
        try:
            detail.ParseFromString(reply.data)
        except DecodeError:
            raise InternalError(f"reply on {subject} has status {status!r} and an unreadable body") from None
        if not status:
            raise InternalError(f"reply on {subject} lacks the {STATUS_HEADER} header")
        raise from_detail(detail)
    response = response_type()
    try:
        response.ParseFromString(reply.data)
    except DecodeError:
        raise InternalError(f"reply on {subject} is not a valid {response_type.DESCRIPTOR.full_name}") from None
    return response


@dataclass(frozen=True, slots=True)
class RequestMeta:
    subject: str
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Req, RequestMeta], Awaitable[Message]]


class RequestMetrics:
    """Counters and latency for request-reply handlers, in a service's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "symbi_nats_requests", "NATS requests handled", ["subject", "outcome"], registry=registry
        )
        self.latency = Histogram(
            "symbi_nats_request_seconds",
            "NATS request handling latency",
            ["subject"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )


class InFlight:
    """Requests being handled concurrently: bounded, referenced, and awaited at shutdown.

    nats-py runs a subscription's callback for one message at a time; a handler
    that waits on I/O (Redis, gRPC, JetStream acks) would serialise every request.
    ``serve(..., inflight=...)`` instead starts each request as a task here, at most
    ``limit`` at once (further messages wait in the subscription's pending queue).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def spawn(self, work: Awaitable[None], name: str) -> None:
        await self._slots.acquire()
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:  # respond() catches everything: a bug
            log.error("request handler task failed: %r", task.exception())

    async def wait(self, timeout_s: float) -> None:
        """Let the requests in progress finish (shutdown); cancel what is still running after ``timeout_s``."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()


async def serve(
    nc: Client,
    subject: str,
    request_type: type[Req],
    handler: Handler[Req],
    *,
    metrics: RequestMetrics | None = None,
    queue: str = "",
    on_error: Callable[[str, BaseException], None] | None = None,
    inflight: InFlight | None = None,
) -> Subscription:
    """Answer protobuf requests on ``subject``; malformed input gets ``invalid_argument``.

    Requests are handled one at a time, or concurrently (up to its limit) in ``inflight``.
    """

    async def handle(msg: Msg, headers: dict[str, str]) -> tuple[bytes, str]:
        return await _handle(msg, headers, request_type, handler)

    return await _subscribe(nc, subject, handle, metrics=metrics, queue=queue, on_error=on_error, inflight=inflight)


RawHandler = Callable[[bytes, RequestMeta], Awaitable[Message]]


async def serve_raw(
    nc: Client,
    subject: str,
    handler: RawHandler,
    *,
    metrics: RequestMetrics | None = None,
    queue: str = "",
    on_error: Callable[[str, BaseException], None] | None = None,
    inflight: InFlight | None = None,
) -> Subscription:
    """Like ``serve``, but the handler parses the request bytes itself (and answers every input)."""

    async def handle(msg: Msg, headers: dict[str, str]) -> tuple[bytes, str]:
        try:
            response = await handler(msg.data, RequestMeta(msg.subject, headers))
        except SymbiError as exc:
            return exc.to_detail().SerializeToString(), exc.code
        except Exception as exc:
            log.exception("handler for %s failed", msg.subject)
            err = from_exception(exc)
            return err.to_detail().SerializeToString(), err.code
        return response.SerializeToString(), STATUS_OK

    return await _subscribe(nc, subject, handle, metrics=metrics, queue=queue, on_error=on_error, inflight=inflight)


async def _subscribe(
    nc: Client,
    subject: str,
    handle: Callable[[Msg, dict[str, str]], Awaitable[tuple[bytes, str]]],
    *,
    metrics: RequestMetrics | None,
    queue: str,
    on_error: Callable[[str, BaseException], None] | None,
    inflight: InFlight | None,
) -> Subscription:
    async def respond(msg: Msg) -> None:
        if not msg.reply:
            log.warning("dropping request on %s without a reply subject", msg.subject)
            return
        headers = dict(msg.headers or {})
        started = time.perf_counter()
        token = otel_context.attach(telemetry.extract(headers))
        outcome = "ok"
        try:
            with telemetry.tracer().start_as_current_span(f"handle {subject}", kind=trace.SpanKind.SERVER):
                body, status = await handle(msg, headers)
                outcome = status
                await nc.publish(msg.reply, body, headers=telemetry.inject({STATUS_HEADER: status}))
        except Exception as exc:  # the reply itself failed: nothing more to tell the caller
            outcome = "reply_failed"
            log.error("cannot reply on %s: %s", msg.subject, exc)
            if on_error is not None:
                on_error(subject, exc)
        finally:
            otel_context.detach(token)
            if metrics is not None:
                metrics.requests.labels(subject, outcome).inc()
                metrics.latency.labels(subject).observe(time.perf_counter() - started)

    if inflight is None:
        return await nc.subscribe(subject, queue=queue, cb=respond)

    async def dispatch(msg: Msg) -> None:
        await inflight.spawn(respond(msg), f"request {msg.subject}")

    return await nc.subscribe(subject, queue=queue, cb=dispatch)


async def _handle(
    msg: Msg, headers: dict[str, str], request_type: type[Req], handler: Handler[Req]
) -> tuple[bytes, str]:
    request_msg = request_type()
    try:
        request_msg.ParseFromString(msg.data)
    except DecodeError:
        err: SymbiError = InvalidArgumentError(
            f"payload on {msg.subject} is not a valid {request_type.DESCRIPTOR.full_name}"
        )
        return err.to_detail().SerializeToString(), err.code
    try:
        response = await handler(request_msg, RequestMeta(msg.subject, headers))
    except SymbiError as exc:
        return exc.to_detail().SerializeToString(), exc.code
    except Exception as exc:
        log.exception("handler for %s failed", msg.subject)
        err = from_exception(exc)
        return err.to_detail().SerializeToString(), err.code
    return response.SerializeToString(), STATUS_OK


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it if its subjects changed (config is the caller's one definition)."""
    name = config.name or ""
    try:
        await _ensure_stream(js, config, name)
    except SymbiError:
        raise
    except Exception as exc:
        raise map_error(exc, f"$JS.API.STREAM.*.{name}", 0.0) from exc


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, name: str) -> None:
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:  # another replica created it first
                raise
        log.info("created JetStream stream %s for %s", name, config.subjects)
        return
    if sorted(info.config.subjects or []) != sorted(config.subjects or []):
        await js.update_stream(config)
        log.info("updated JetStream stream %s subjects to %s", name, config.subjects)


async def stream_messages(
    js: JetStreamContext, stream: str, subject: str, *, from_sequence: int = 1, timeout: float = 5.0
) -> AsyncIterator[RawStreamMsg]:
    """The messages of ``stream`` on ``subject``, oldest first, read one by one (no consumer is made).

    Ends at the last one (or at once when the stream does not exist); a broker that cannot
    answer raises the typed error. Deleting the message just read does not disturb it.
    """
    seq = from_sequence
    while True:
        try:
            raw = await js.get_msg(stream, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return
        except Exception as exc:
            raise map_error(exc, f"$JS.API.STREAM.MSG.GET.{stream}", timeout) from exc
        yield raw
        seq = int(raw.seq or seq) + 1


async def publish_durable(
    js: JetStreamContext, subject: str, message: Message, *, msg_id: str, timeout: float = 5.0
) -> int:
    """Publish into JetStream with ``Nats-Msg-Id`` dedup; returns the stream sequence."""
    headers = telemetry.inject({MSG_ID_HEADER: msg_id})
    try:
        ack = await js.publish(subject, message.SerializeToString(), timeout=timeout, headers=headers)
    except Exception as exc:
        raise map_error(exc, subject, timeout) from exc
    return int(ack.seq)
