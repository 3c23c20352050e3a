"""The router: every envelope an agent sends, checked, decided, limited, delivered, audited.

An agent sends each envelope as a NATS request on ``symbi.bus.out.<its id>`` (the
broker lets it publish there only as itself) and gets a ``SendResult``. In order:

1. **shape**: size, fields, version (MALFORMED, OVERSIZED); the envelope must name the
   agent whose subject it came on as its sender (UNKNOWN_SENDER otherwise);
2. **sender**: a known agent that may send now (READY or RUNNING); its current signing
   key; the Ed25519 signature when the broker does not authenticate the sender
   (``router_verify``; receivers always verify, end to end);
3. **time**: within the clock-skew window (STALE) and not expired (EXPIRED);
4. **addressing**: the recipient exists and has not ended (UNKNOWN_RECIPIENT), or the
   topic is well formed; a REPLY must answer an open request from that recipient;
5. **policy**: ``message_send`` with the sender as subject and the recipient agent or
   the topic as resource, operation ``send``/``publish``/``request``/``reply``
   (POLICY_DENIED with the reason; UNAVAILABLE when the policy service cannot decide).
   Conditions the router can honour (rate limits, max bytes, audit) are applied; any
   other condition (redaction of an end-to-end encrypted payload, approvals) cannot be,
   so the message is refused;
6. **rate limit**: the decision's limits plus the configured per-agent default, as
   Redis token buckets (RATE_LIMITED with ``retry_after``);
7. **dedup**: an id seen before is not delivered again (DUPLICATE);
8. **delivery**: DIRECT into the INBOX stream (durable; ``Nats-Msg-Id`` dedup; a full
   inbox is UNDELIVERABLE); TOPIC, REQUEST and REPLY on core NATS subjects that only the
   addressed agents may read;
9. **audit**: ``message.routed`` or ``message.rejected`` with the header facts (never
   the payload), the decision id and the outcome. When the audit buffer is full the
   message is refused (fail closed) before anything is delivered.

The router never holds a key that opens agents' direct messages.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats.js.errors
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.js import JetStreamContext
from redis.exceptions import RedisError

from symbi_common import envelope, natsio, policy_client, subjects, telemetry
from symbi_common.audit_events import AuditBuffer, build_event
from symbi_common.envelope import EnvelopeRejected
from symbi_common.errors import InvalidArgumentError
from symbi_common.policy_client import PolicyDecider, Target
from symbi_common.ratelimit import RateLimiter, limits_of, rate_limit
from symbi_common.redisio import as_bytes
from symbi_common.settings import MessagingSettings
from symbi_lifecycle.bus.directory import (
    ENDED_STATES,
    RECEIVING_STATES,
    SENDING_STATES,
    AgentDirectory,
    AgentInfo,
    topic_target,
)
from symbi_lifecycle.bus.keys import TopicKeys
from symbi_lifecycle.bus.metrics import RouterMetrics
from symbi_proto.v1 import audit_pb2, message_pb2, policy_pb2

log = logging.getLogger(__name__)

M = message_pb2
OPERATIONS = {
    M.MESSAGE_KIND_DIRECT: "send",
    M.MESSAGE_KIND_TOPIC: "publish",
    M.MESSAGE_KIND_REQUEST: "request",
    M.MESSAGE_KIND_REPLY: "reply",
}
HONOURED_CONDITIONS = frozenset({"rate_limit", "max_bytes", "require_audit"})
SEEN_PREFIX = "symbi:bus:seen:"
REQUEST_PREFIX = "symbi:bus:request:"
DEFAULT_REQUEST_TTL_S = 60.0
MAX_REQUEST_TTL_S = 3600.0


class Refused(Exception):
    """A message the router will not deliver, with its reason."""

    def __init__(self, reason: int, detail: str, *, decision_id: str = "", retry_after_s: float = 0.0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.decision_id = decision_id
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RouterDeps:
    nc: Client
    js: JetStreamContext
    redis: aioredis.Redis
    directory: AgentDirectory
    topics: TopicKeys
    policy: PolicyDecider
    limiter: RateLimiter
    audit: AuditBuffer
    metrics: RouterMetrics
    settings: MessagingSettings
    instance_id: str
    verify_signatures: bool


class Router:
    def __init__(self, deps: RouterDeps) -> None:
        self.d = deps
        self.default_window_s = 2 * deps.settings.max_clock_skew_s

    async def handle(self, subject: str, data: bytes, headers: Mapping[str, str]) -> message_pb2.SendResult:
        """Route one envelope published on ``subject``; never raises."""
        started = time.perf_counter()
        sender_token = subject.rsplit(".", 1)[-1]
        message = M.SecureMessage()
        try:
            message = envelope.parse_wire(data, self.d.settings.max_payload_bytes)
            result = await self.route(message, sender_token)
        except EnvelopeRejected as exc:
            result = self._refused(message, Refused(exc.reason, exc.detail), sender_token)
        except Refused as exc:
            result = self._refused(message, exc, sender_token)
        except Exception as exc:  # a bug or an outage: refuse, fail closed
            log.exception("routing failed")
            result = self._refused(
                message, Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"router error: {exc!r}"), sender_token
            )
        self.d.metrics.route_seconds.labels(_kind(message)).observe(time.perf_counter() - started)
        return result

    async def route(self, message: message_pb2.SecureMessage, sender_token: str) -> message_pb2.SendResult:
        header = message.header
        envelope.check_shape(message, self.d.settings.max_payload_bytes)
        if header.sender != sender_token:
            raise Refused(
                M.MESSAGE_REJECT_REASON_UNKNOWN_SENDER,
                f"envelope names {header.sender!r} as its sender but was sent by {sender_token!r}",
            )
        sender = await self._sender(message)
        envelope.check_time(header, time.time(), self.d.settings.max_clock_skew_s)
        resource = await self._addressing(header)
        if not self.d.audit.healthy and self.d.audit.pending >= self.d.audit.capacity:
            raise Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, "audit trail unavailable; nothing is sent unaudited")
        decision = await self._decide(message, sender, resource)
        await self._limit(sender, decision)
        status = await self._deliver(message, decision.decision_id)
        result = M.SendResult(message_id=header.message_id, status=status, decision_id=decision.decision_id)
        self._audit_routed(message, result)
        return result

    async def _sender(self, message: message_pb2.SecureMessage) -> AgentInfo:
        header = message.header
        sender = await self.d.directory.get(header.sender)
        if sender is None:
            raise Refused(M.MESSAGE_REJECT_REASON_UNKNOWN_SENDER, f"no agent {header.sender!r}")
        if sender.state not in SENDING_STATES:
            ended = sender.state in ENDED_STATES
            reason = M.MESSAGE_REJECT_REASON_UNKNOWN_SENDER if ended else M.MESSAGE_REJECT_REASON_POLICY_DENIED
            raise Refused(reason, f"agent {sender.agent_id} is {sender.state_name} and may not send")
        if self.d.verify_signatures:
            envelope.verify_signature(message, sender.identity)
        elif sender.identity.key_id != header.signing_key_id:
            raise Refused(M.MESSAGE_REJECT_REASON_BAD_SIGNATURE, "signing key is not the sender's current key")
        return sender

    async def _addressing(self, header: message_pb2.MessageHeader) -> Target:
        if header.kind == M.MESSAGE_KIND_TOPIC:
            if header.recipient or not header.topic:
                raise Refused(M.MESSAGE_REJECT_REASON_MALFORMED, "a topic message names a topic and no recipient")
            try:
                subjects.bus_topic(header.topic)
            except InvalidArgumentError as exc:
                raise Refused(M.MESSAGE_REJECT_REASON_MALFORMED, exc.message) from None
            if not header.key_id.startswith(f"topic:{header.topic}:"):
                raise Refused(M.MESSAGE_REJECT_REASON_MALFORMED, "a topic message is sealed with its topic's key")
            _, current = await self.d.topics.current(header.topic)
            if header.key_id != current.key_id:
                raise Refused(
                    M.MESSAGE_REJECT_REASON_STALE_KEY,
                    f"topic {header.topic} is at key {current.key_id}; fetch it and send again",
                )
            return topic_target(header.topic)
        if header.topic or not header.recipient:
            raise Refused(M.MESSAGE_REJECT_REASON_MALFORMED, "a message to an agent names a recipient and no topic")
        recipient = await self.d.directory.get(header.recipient)
        if recipient is None or recipient.state not in RECEIVING_STATES:
            state = f" ({recipient.state_name})" if recipient is not None else ""
            raise Refused(
                M.MESSAGE_REJECT_REASON_UNKNOWN_RECIPIENT, f"no agent {header.recipient!r} to deliver to{state}"
            )
        if header.kind == M.MESSAGE_KIND_REPLY:
            await self._check_open_request(header)
        return recipient.target()

    async def _check_open_request(self, header: message_pb2.MessageHeader) -> None:
        try:
            pair = await self.d.redis.getdel(REQUEST_PREFIX + header.correlation_id)
        except (RedisError, OSError) as exc:
            raise Refused(
                M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"cannot check the request being answered: {exc}"
            ) from None
        expected = f"{header.recipient}>{header.sender}".encode()
        if not header.correlation_id or pair is None or as_bytes(pair) != expected:
            raise Refused(
                M.MESSAGE_REJECT_REASON_POLICY_DENIED,
                f"no open request {header.correlation_id!r} from {header.recipient} to {header.sender} to reply to",
            )

    async def _decide(
        self, message: message_pb2.SecureMessage, sender: AgentInfo, resource: Target
    ) -> policy_pb2.PolicyDecision:
        header = message.header
        request = policy_client.request(
            "message_send",
            sender.principal(),
            resource,
            operation=OPERATIONS[header.kind],
            action_attributes={"content_type": header.content_type},
            correlation_id=header.message_id,
        )
        decision = await self.d.policy.evaluate(request)
        outcome = decision.WhichOneof("outcome")
        if outcome == "deny":
            reason = M.MESSAGE_REJECT_REASON_POLICY_DENIED
            if decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE:
                reason = M.MESSAGE_REJECT_REASON_UNAVAILABLE
            raise Refused(reason, decision.deny.reason, decision_id=decision.decision_id)
        if outcome == "allow_with_conditions":
            for condition in decision.allow_with_conditions.conditions:
                kind = condition.WhichOneof("kind") or "?"
                if kind not in HONOURED_CONDITIONS:
                    raise Refused(
                        M.MESSAGE_REJECT_REASON_POLICY_DENIED,
                        f"policy requires {kind} ({condition.rule}), which the router cannot apply to an "
                        "end-to-end encrypted message",
                        decision_id=decision.decision_id,
                    )
                if kind == "max_bytes" and len(message.ciphertext) - 16 > condition.max_bytes.limit:
                    raise Refused(
                        M.MESSAGE_REJECT_REASON_OVERSIZED,
                        f"payload over the {condition.max_bytes.limit} bytes policy allows ({condition.rule})",
                        decision_id=decision.decision_id,
                    )
        return decision

    async def _limit(self, sender: AgentInfo, decision: policy_pb2.PolicyDecision) -> None:
        limits = limits_of(decision)
        cfg = self.d.settings
        if cfg.rate_limit_per_s > 0:
            limits.append(
                rate_limit(
                    f"msg:agent:{sender.agent_id}", max(1, round(cfg.rate_limit_per_s)), 1.0, cfg.rate_limit_burst
                )
            )
        result = await self.d.limiter.acquire(limits)
        if result.allowed:
            return
        reason = M.MESSAGE_REJECT_REASON_UNAVAILABLE if result.unavailable else M.MESSAGE_REJECT_REASON_RATE_LIMITED
        raise Refused(reason, result.detail, decision_id=decision.decision_id, retry_after_s=result.retry_after_s)

    async def _deliver(
        self, message: message_pb2.SecureMessage, decision_id: str
    ) -> message_pb2.DeliveryStatus.ValueType:
        header = message.header
        try:
            fresh = await self.d.redis.set(
                SEEN_PREFIX + header.message_id, b"1", nx=True, px=int(self.default_window_s * 1000)
            )
        except (RedisError, OSError) as exc:
            raise Refused(
                M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"cannot check for duplicates: {exc}", decision_id=decision_id
            ) from None
        if not fresh:
            return M.DELIVERY_STATUS_DUPLICATE
        try:
            return await self._publish(message)
        except BaseException:
            # Not delivered: forget the id so that the sender's retry is not taken for a duplicate.
            try:
                await self.d.redis.delete(SEEN_PREFIX + header.message_id)
            except (RedisError, OSError):
                log.warning("message %s not delivered and its id still marked seen", header.message_id)
            raise

    async def _publish(self, message: message_pb2.SecureMessage) -> message_pb2.DeliveryStatus.ValueType:
        header = message.header
        data = envelope.wire(message)
        trace_headers = telemetry.inject()
        if header.kind == M.MESSAGE_KIND_DIRECT:
            subject = subjects.bus_inbox(header.recipient)
            try:
                ack = await self.d.js.publish(
                    subject, data, timeout=5, headers={**trace_headers, natsio.MSG_ID_HEADER: header.message_id}
                )
            except nats.js.errors.APIError as exc:
                if "maximum messages per subject" in str(exc).lower():
                    raise Refused(
                        M.MESSAGE_REJECT_REASON_UNDELIVERABLE, f"{header.recipient}'s inbox is full"
                    ) from None
                raise Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"inbox store refused the message: {exc}") from None
            except Exception as exc:
                raise Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"inbox store unavailable: {exc!r}") from None
            return M.DELIVERY_STATUS_DUPLICATE if ack.duplicate else M.DELIVERY_STATUS_ACCEPTED
        if header.kind == M.MESSAGE_KIND_REQUEST:
            # Recorded before it goes out, so that even an instant reply finds it.
            pair = f"{header.sender}>{header.recipient}".encode()
            try:
                await self.d.redis.set(REQUEST_PREFIX + header.message_id, pair, px=int(_request_ttl(header) * 1000))
            except (RedisError, OSError) as exc:
                raise Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"cannot record the request: {exc}") from None
            subject = subjects.bus_request(header.recipient)
        elif header.kind == M.MESSAGE_KIND_REPLY:
            subject = subjects.bus_reply(header.recipient)
        else:
            subject = subjects.bus_topic(header.topic)
        try:
            await self.d.nc.publish(subject, data, headers=trace_headers)
        except Exception as exc:
            raise Refused(M.MESSAGE_REJECT_REASON_UNAVAILABLE, f"cannot publish: {exc!r}") from None
        return M.DELIVERY_STATUS_ACCEPTED

    # -- outcomes --------------------------------------------------------------------

    def _refused(self, message: message_pb2.SecureMessage, exc: Refused, sender_token: str) -> message_pb2.SendResult:
        header = message.header
        name = M.MessageRejectReason.Name(exc.reason)  # type: ignore[arg-type]
        self.d.metrics.rejected.labels(name.removeprefix("MESSAGE_REJECT_REASON_").lower()).inc()
        result = M.SendResult(
            message_id=header.message_id,
            status=M.DELIVERY_STATUS_REJECTED,
            reason=exc.reason,  # type: ignore[arg-type]
            detail=exc.detail,
            decision_id=exc.decision_id,
        )
        if exc.retry_after_s > 0:
            result.retry_after.FromNanoseconds(int(exc.retry_after_s * 1e9))
        log.info("message %s from %s refused: %s %s", header.message_id or "?", sender_token, name, exc.detail)
        details = {**_facts(message), "reason": name, "detail": exc.detail, "decision_id": exc.decision_id}
        denied = exc.reason in (M.MESSAGE_REJECT_REASON_POLICY_DENIED, M.MESSAGE_REJECT_REASON_RATE_LIMITED)
        outcome = audit_pb2.AUDIT_OUTCOME_DENIED if denied else audit_pb2.AUDIT_OUTCOME_FAILURE
        self._audit("message.rejected", sender_token, details, outcome, header.message_id)
        return result

    def _audit_routed(self, message: message_pb2.SecureMessage, result: message_pb2.SendResult) -> None:
        status = M.DeliveryStatus.Name(result.status).removeprefix("DELIVERY_STATUS_").lower()
        self.d.metrics.routed.labels(_kind(message), status).inc()
        details = {**_facts(message), "status": status, "decision_id": result.decision_id}
        self._audit(
            "message.routed", message.header.sender, details, audit_pb2.AUDIT_OUTCOME_SUCCESS, message.header.message_id
        )

    def _audit(
        self, event_type: str, agent_id: str, details: dict[str, Any], outcome: int, correlation_id: str
    ) -> None:
        source = self.d.instance_id

        def build() -> audit_pb2.AuditEvent:
            return build_event(
                event_type,
                source=source,
                agent_id=agent_id if subjects.is_token(agent_id) else "",
                details=details,
                outcome=outcome,  # type: ignore[arg-type]
                correlation_id=correlation_id,
            )

        if not self.d.audit.offer(build):
            log.error("audit buffer full: %s for %s not recorded", event_type, correlation_id)


def _request_ttl(header: message_pb2.MessageHeader) -> float:
    """How long a request may be answered: until it expires (at most an hour), else a minute."""
    if header.HasField("expires_at"):
        return min(MAX_REQUEST_TTL_S, max(1.0, header.expires_at.ToNanoseconds() / 1e9 - time.time()))
    return DEFAULT_REQUEST_TTL_S


def _kind(message: message_pb2.SecureMessage) -> str:
    return OPERATIONS.get(message.header.kind, "unknown")


def _facts(message: message_pb2.SecureMessage) -> dict[str, Any]:
    header = message.header
    facts: dict[str, Any] = {
        "message_id": header.message_id,
        "kind": _kind(message),
        "sender": header.sender,
        "bytes": max(0, len(message.ciphertext) - 16),
        "ciphertext_sha256": hashlib.sha256(message.ciphertext).hexdigest(),
    }
    for key in ("recipient", "topic", "content_type", "correlation_id", "key_id"):
        value = getattr(header, key)
        if value:
            facts[key] = value
    return facts
