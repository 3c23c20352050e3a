"""``AgentBus``: an agent's end of the message bus.

An agent's runtime gets ``BusCredentials`` from the lifecycle service (its keys, its
own NATS user, the router's identity) and connects::

    bus = await AgentBus.connect(nats_settings, credentials, messaging_settings)
    result = await bus.send("agent-b", b"hello")                # direct, durable
    await bus.subscribe("alerts", on_alert)                    # topic
    await bus.publish("alerts", b"disk full")
    answer = await bus.request("agent-b", b"2+2?", timeout=5)  # request-reply
    await bus.serve_requests(answer_questions)
    consumer = await bus.consume(on_direct_message)            # the durable inbox

Everything it sends is an envelope (``symbi_common.envelope``) sealed with the pair
key of sender and recipient (or the topic's key) and signed with the agent's key, sent
as a request on its own out subject; the router decides and answers with a
``SendResult``. Everything it receives is opened (signature, addressing, time, replay,
decryption) before a handler sees it; refused envelopes are reported to the router,
which audits them and keeps them as dead letters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from symbi_common import envelope, natsauth, natsio, subjects, telemetry
from symbi_common.bus.processed import MemoryProcessedLog, ProcessedLog
from symbi_common.envelope import AgentKeys, EnvelopeOpener, EnvelopeRejected, Opened, SymmetricKey, TopicKeyring
from symbi_common.errors import (
    DeadlineExceededError,
    InternalError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SymbiError,
)
from symbi_common.replay import MemoryReplayCache, ReplayCache
from symbi_common.settings import MessagingSettings, NatsSettings
from symbi_proto.v1 import agent_pb2, message_pb2

if TYPE_CHECKING:
    from symbi_common.bus.receive import InboxConsumer

log = logging.getLogger(__name__)

ROUTER_ID = "symbi-router"
ERROR_CONTENT_TYPE = "application/vnd.symbi.error+json"
GRANT_CONTENT_TYPE = "application/x-protobuf; type=symbi.v1.TopicKeyGrant"
IDENTITY_TTL_S = 30.0
M = message_pb2

Handler = Callable[[Opened], Awaitable[None]]
RequestHandler = Callable[[Opened], Awaitable[bytes]]


class MessageRefusedError(PermissionDeniedError):
    """The router refused a message; ``result`` says why (reason, detail, retry_after)."""

    def __init__(self, result: message_pb2.SendResult) -> None:
        reason = M.MessageRejectReason.Name(result.reason)
        super().__init__(f"{reason}: {result.detail}", metadata={"reason": reason})
        self.result = result


class RemoteError(InternalError):
    """The agent that answered a request reported an error instead of a result."""


def raise_for_status(result: message_pb2.SendResult) -> message_pb2.SendResult:
    """``result`` if the router accepted the message (or already had it), else ``MessageRefusedError``."""
    if result.status in (M.DELIVERY_STATUS_ACCEPTED, M.DELIVERY_STATUS_DELIVERED, M.DELIVERY_STATUS_DUPLICATE):
        return result
    if result.reason == M.MESSAGE_REJECT_REASON_RATE_LIMITED:
        err = ResourceExhaustedError(result.detail, metadata={"reason": "RATE_LIMITED"})
        err.retry_after_s = result.retry_after.ToNanoseconds() / 1e9  # type: ignore[attr-defined]
        raise err
    raise MessageRefusedError(result)


@dataclass
class BusStats:
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: int) -> None:
        name = M.MessageRejectReason.Name(reason).removeprefix("MESSAGE_REJECT_REASON_").lower()  # type: ignore[arg-type]
        self.rejected[name] = self.rejected.get(name, 0) + 1


class _Directory:
    """Public identities this agent has looked up (``envelope.Directory``), refreshed after a while."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[agent_pb2.AgentIdentity, float]] = {}

    def identity(self, agent_id: str) -> agent_pb2.AgentIdentity | None:
        entry = self.known.get(agent_id)
        return entry[0] if entry else None

    def fresh(self, agent_id: str) -> bool:
        entry = self.known.get(agent_id)
        return entry is not None and entry[1] > time.monotonic()

    def put(self, agent_id: str, identity: agent_pb2.AgentIdentity, ttl_s: float = IDENTITY_TTL_S) -> None:
        self.known[agent_id] = (identity, time.monotonic() + ttl_s)


class AgentBus:
    """One agent's connection to the bus (see the module docstring)."""

    def __init__(
        self,
        nc: Client,
        credentials: message_pb2.BusCredentials,
        settings: MessagingSettings,
        *,
        processed: ProcessedLog | None = None,
        replay: ReplayCache | None = None,
        request_timeout_s: float = 5.0,
        owns_connection: bool = True,
    ) -> None:
        self.nc = nc
        self.credentials = credentials
        self.agent_id = credentials.agent_id
        self.settings = settings
        self.keys = AgentKeys.from_private_bytes(
            credentials.agent_id,
            credentials.key_id,
            bytes(credentials.signing_private_key),
            bytes(credentials.agreement_private_key),
        )
        self.processed: ProcessedLog = processed or MemoryProcessedLog(ttl_s=settings.inbox_max_age_s)
        self.request_timeout_s = request_timeout_s
        self.stats = BusStats()
        self.directory = _Directory()
        self.directory.put(ROUTER_ID, credentials.router, ttl_s=float("inf"))
        self.topic_keys = TopicKeyring()
        self._owns_connection = owns_connection
        self._subscriptions: list[Subscription] = []
        self._replies: dict[str, tuple[str, asyncio.Future[Opened]]] = {}
        self._reply_sub: Subscription | None = None
        self._consumers: list[InboxConsumer] = []
        self.opener = EnvelopeOpener(
            self.directory,
            replay or MemoryReplayCache(),
            self._key_for,
            recipient=self.agent_id,
            max_skew_s=settings.max_clock_skew_s,
            max_payload_bytes=settings.max_payload_bytes,
        )

    @classmethod
    async def connect(
        cls,
        nats_settings: NatsSettings,
        credentials: message_pb2.BusCredentials,
        settings: MessagingSettings,
        **options: object,
    ) -> AgentBus:
        """Connect as the agent's own broker user (or without auth when the broker has none)."""
        creds = None
        if credentials.nats_user_jwt:
            creds = natsauth.creds_text(credentials.nats_user_jwt, bytes(credentials.nats_user_seed))
            nats_settings = nats_settings.model_copy(update={"credentials": None})
        nc = await natsio.connect(
            nats_settings,
            f"agent:{credentials.agent_id}",
            credentials=creds,
            inbox_prefix=credentials.inbox_prefix or None,
        )
        return cls(nc, credentials, settings, **options)  # type: ignore[arg-type]

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.stop()
        for sub in self._subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be gone already
                log.debug("unsubscribe failed: %r", exc)
        for _, future in self._replies.values():
            future.cancel()
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    # -- keys and identities ---------------------------------------------------------

    async def identity(self, agent_id: str) -> agent_pb2.AgentIdentity:
        """An agent's public identity, from the router's directory (cached for a while)."""
        if not self.directory.fresh(agent_id):
            response = await natsio.request(
                self.nc,
                subjects.bus_ctl(self.agent_id, "directory"),
                agent_pb2.GetAgentIdentityRequest(agent_id=agent_id),
                agent_pb2.GetAgentIdentityResponse,
                timeout=self.request_timeout_s,
            )
            self.directory.put(agent_id, response.identity)
        identity = self.directory.identity(agent_id)
        assert identity is not None
        return identity

    async def pair_key(self, peer_id: str, epoch: int = 0) -> SymmetricKey:
        return envelope.pair_key(self.keys, peer_id, await self.identity(peer_id), epoch)

    async def topic_key(self, topic: str, *, refresh: bool = False) -> SymmetricKey:
        """The topic's current key, granted by the router when policy lets this agent subscribe."""
        if not refresh:
            current = self.topic_keys.get_current(topic)
            if current is not None:
                return current
        response = await natsio.request(
            self.nc,
            subjects.bus_ctl(self.agent_id, "topic_key"),
            M.TopicKeyRequest(topic=topic),
            M.TopicKeyResponse,
            timeout=self.request_timeout_s,
        )
        grant_envelope = response.grant
        if grant_envelope.header.sender != ROUTER_ID or grant_envelope.header.content_type != GRANT_CONTENT_TYPE:
            raise PermissionDeniedError("topic key grant does not come from the router")
        opened = await self.opener.open(grant_envelope, replay=False)
        grant = M.TopicKeyGrant()
        grant.ParseFromString(opened.plaintext)
        if grant.topic != topic:
            raise PermissionDeniedError(f"asked for the key of {topic!r}, got {grant.topic!r}")
        return self.topic_keys.add(topic, grant.epoch, bytes(grant.key))

    def _key_for(self, header: message_pb2.MessageHeader) -> SymmetricKey | None:
        if header.kind == M.MESSAGE_KIND_TOPIC:
            return self.topic_keys.get(header.key_id)
        identity = self.directory.identity(header.sender)
        if identity is None:
            return None
        try:
            epoch = int(header.key_id.split(":")[1])
        except (IndexError, ValueError):
            return None
        return envelope.pair_key(self.keys, header.sender, identity, epoch)

    # -- sending ---------------------------------------------------------------------

    async def seal_to(
        self,
        recipient: str,
        payload: bytes,
        *,
        kind: message_pb2.MessageKind.ValueType = M.MESSAGE_KIND_DIRECT,
        content_type: str = "application/octet-stream",
        correlation_id: str = "",
        ttl_s: float = 0.0,
    ) -> message_pb2.SecureMessage:
        key = await self.pair_key(recipient)
        return envelope.seal(
            self.keys,
            key,
            payload,
            kind=kind,
            recipient=recipient,
            content_type=content_type,
            correlation_id=correlation_id,
            ttl_s=ttl_s,
        )

    async def send_message(self, message: message_pb2.SecureMessage) -> message_pb2.SendResult:
        """Hand one envelope to the router; its ``SendResult`` says whether it was accepted and why not."""
        subject = subjects.bus_out(self.agent_id)
        try:
            reply = await self.nc.request(
                subject, envelope.wire(message), timeout=self.request_timeout_s, headers=telemetry.inject()
            )
        except Exception as exc:
            raise natsio.map_error(exc, subject, self.request_timeout_s) from exc
        result = natsio.decode_reply(reply, M.SendResult, subject)
        self.stats.sent += 1
        return result

    async def send(
        self, recipient: str, payload: bytes, *, content_type: str = "application/octet-stream", ttl_s: float = 0.0
    ) -> message_pb2.SendResult:
        """A direct message: stored durably in the recipient's inbox once the router accepts it."""
        message = await self.seal_to(recipient, payload, content_type=content_type, ttl_s=ttl_s)
        return await self.send_message(message)

    async def publish(
        self, topic: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> message_pb2.SendResult:
        """A topic message, to every current subscriber allowed to hold the topic's key."""
        for refresh in (False, True):
            key = await self.topic_key(topic, refresh=refresh)
            message = envelope.seal(
                self.keys, key, data, kind=M.MESSAGE_KIND_TOPIC, topic=topic, content_type=content_type
            )
            result = await self.send_message(message)
            if result.reason != M.MESSAGE_REJECT_REASON_STALE_KEY:
                break  # else the topic's key was rotated: fetch the new one and seal again, once
        return result

    async def request(
        self,
        recipient: str,
        payload: bytes,
        *,
        timeout: float,
        content_type: str = "application/octet-stream",
    ) -> Opened:
        """Ask ``recipient`` and wait for its reply; the request expires with the timeout."""
        await self._ensure_reply_subscription()
        message = await self.seal_to(
            recipient, payload, kind=M.MESSAGE_KIND_REQUEST, content_type=content_type, ttl_s=timeout
        )
        future: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        self._replies[message.header.message_id] = (recipient, future)
        try:
            raise_for_status(await self.send_message(message))
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise DeadlineExceededError(f"no reply from {recipient} within {timeout:.2f}s") from None
        finally:
            self._replies.pop(message.header.message_id, None)
        if reply.header.content_type == ERROR_CONTENT_TYPE:
            raise RemoteError(f"{recipient} failed: {json.loads(reply.plaintext).get('error', '?')}")
        return reply

    async def _ensure_reply_subscription(self) -> None:
        if self._reply_sub is None:
            self._reply_sub = await self.nc.subscribe(subjects.bus_reply(self.agent_id), cb=self._on_reply)
            self._subscriptions.append(self._reply_sub)
            await self.nc.flush(timeout=math.ceil(self.request_timeout_s))

    async def _on_reply(self, msg: Msg) -> None:
        opened = await self.receive(msg.data)
        if opened is None:
            return
        waiting = self._replies.get(opened.header.correlation_id)
        if waiting is None or waiting[0] != opened.header.sender:
            log.info("reply %s matches no open request", opened.header.message_id)
            return
        if not waiting[1].done():
            waiting[1].set_result(opened)

    # -- receiving -------------------------------------------------------------------

    async def receive(self, data: bytes, *, now: float | None = None, replay: bool = True) -> Opened | None:
        """Open an envelope from the wire, or report why not (to the router) and return None."""
        try:
            message = envelope.parse_wire(data, self.settings.max_payload_bytes)
        except EnvelopeRejected as exc:
            await self.refused(exc, data)
            return None
        return await self.open_received(message, data, now=now, replay=replay)

    async def open_received(
        self, message: message_pb2.SecureMessage, data: bytes, *, now: float | None = None, replay: bool = True
    ) -> Opened | None:
        """``receive`` of an envelope already parsed from ``data``."""
        try:
            if not self.directory.fresh(message.header.sender) and message.header.sender:
                try:
                    await self.identity(message.header.sender)
                except SymbiError as exc:
                    log.debug("cannot look up %s: %s", message.header.sender, exc)
            if message.header.kind == M.MESSAGE_KIND_TOPIC and self.topic_keys.get(message.header.key_id) is None:
                await self._maybe_refresh_topic_key(message.header)
            opened = await self.opener.open(message, now=now, replay=replay)
        except EnvelopeRejected as exc:
            await self.refused(exc, data)
            return None
        self.stats.received += 1
        return opened

    async def refused(self, exc: EnvelopeRejected, data: bytes) -> None:
        """Count a refused envelope and report it to the router."""
        self.stats.reject(exc.reason)
        await self.report_rejection(exc, data)

    async def _maybe_refresh_topic_key(self, header: message_pb2.MessageHeader) -> None:
        if header.key_id.startswith(f"topic:{header.topic}:"):
            try:
                await self.topic_key(header.topic, refresh=True)
            except SymbiError as exc:
                log.info("cannot get the key of topic %s: %s", header.topic, exc)

    async def report_rejection(self, exc: EnvelopeRejected, data: bytes) -> bool:
        """Tell the router a received envelope was refused (it audits it and keeps a dead letter)."""
        report = M.MessageRejected(reason=exc.reason, detail=exc.detail, rejected_by=self.agent_id, envelope=data)
        if exc.header is not None:
            report.header.CopyFrom(exc.header)
        report.time.GetCurrentTime()
        log.warning("refused a message: %s", exc)
        try:
            await self.nc.publish(subjects.bus_ctl(self.agent_id, "rejected"), report.SerializeToString())
        except Exception as err:
            log.warning("cannot report the refused message: %r", err)
            return False
        return True

    async def subscribe(self, topic: str, handler: Handler) -> Subscription:
        """Receive a topic's messages (the broker refuses topics this agent may not read)."""
        await self.topic_key(topic)

        async def on_message(msg: Msg) -> None:
            opened = await self.receive(msg.data)
            if opened is not None:
                await _run_handler(handler, opened)

        sub = await self.nc.subscribe(subjects.bus_topic(topic), cb=on_message)
        self._subscriptions.append(sub)
        await self.nc.flush(timeout=math.ceil(self.request_timeout_s))
        return sub

    async def serve_requests(self, handler: RequestHandler) -> Subscription:
        """Answer requests addressed to this agent; a handler's exception becomes an error reply."""

        async def on_request(msg: Msg) -> None:
            opened = await self.receive(msg.data)
            if opened is None:
                return
            content_type = "application/octet-stream"
            try:
                answer = await handler(opened)
            except Exception as exc:
                log.warning("request handler failed: %r", exc)
                answer, content_type = (
                    json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(),
                    ERROR_CONTENT_TYPE,
                )
            expires = opened.header.expires_at.ToNanoseconds() / 1e9 if opened.header.HasField("expires_at") else 0
            reply = await self.seal_to(
                opened.header.sender,
                answer,
                kind=M.MESSAGE_KIND_REPLY,
                content_type=content_type,
                correlation_id=opened.header.message_id,
                ttl_s=max(1.0, expires - time.time()) if expires else 0.0,
            )
            try:
                result = await self.send_message(reply)
            except SymbiError as exc:
                log.warning("reply to %s not sent: %s", opened.header.sender, exc)
                return
            if result.status == M.DELIVERY_STATUS_REJECTED:
                log.warning("reply to %s refused: %s", opened.header.sender, result.detail)

        sub = await self.nc.subscribe(subjects.bus_request(self.agent_id), cb=on_request)
        self._subscriptions.append(sub)
        await self.nc.flush(timeout=math.ceil(self.request_timeout_s))
        return sub

    async def consume(self, handler: Handler, *, batch: int = 16, **options: Any) -> InboxConsumer:
        """Handle direct messages from the durable inbox until ``stop()`` (see ``InboxConsumer``).

        ``retry_delays_s``: waits before a message whose handler failed is delivered again.
        """
        from symbi_common.bus.receive import InboxConsumer

        consumer = InboxConsumer(self, handler, batch=batch, **options)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer


async def _run_handler(handler: Handler, opened: Opened) -> None:
    try:
        await handler(opened)
    except Exception:
        log.exception("message handler failed for %s", opened.header.message_id)
