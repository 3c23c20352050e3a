"""The message bus on a real nats-server with JetStream and operator-mode authorization.

Policy and lifecycle (which runs the router) connect as services; every agent connects
as its own broker user with the credentials the lifecycle service issued. Nothing is
mocked: real envelopes, real policy decisions, real Redis buckets, real JetStream.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nkeys
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from nats.aio.client import Client, RawCredentials
from symbi_testing.checks import eventually, register_policies
from symbi_testing.fixtures import RunService, SecuredNats, make_settings
from symbi_testing.streams import audit_events, delete_stream, wait_for_audit

from symbi_common import envelope, natsauth, natsio, subjects
from symbi_common.bus.client import AgentBus, MessageRefusedError, RemoteError, raise_for_status
from symbi_common.bus.processed import RedisProcessedLog
from symbi_common.envelope import AgentKeys, Opened
from symbi_common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.settings import Settings
from symbi_lifecycle.service import SPEC as LIFECYCLE
from symbi_policy.service import SPEC as POLICY
from symbi_proto.v1 import agent_pb2, common_pb2, message_pb2

pytestmark = pytest.mark.integration
M = message_pb2

POLICIES = """
id: bus-tests
rules:
  - name: testers-create
    effect: allow
    actions: [agent_create]
    when: subject.id == "tester"
  - name: same-tenant
    effect: allow
    actions: [message_send]
    operations: [send, request, reply]
    resources: [agent]
    when: subject.tenant == resource.tenant
  - name: tenants-apart
    effect: deny
    actions: [message_send]
    resources: [agent]
    when: subject.tenant != resource.tenant
    reason: messages stay in their tenant
  - name: news-readers
    effect: allow
    actions: [message_send]
    operations: [publish, subscribe]
    resources: ["topic:news.*"]
    when: subject.capabilities contains "publish_topics"
  - name: chatty-limit
    effect: require
    actions: [message_send]
    when: subject.name == "chatty"
    require:
      rate_limit: {key: "test:{subject.id}", limit: 3, period: 1m}
"""


def manifest(name: str, tenant: str, capabilities: tuple[str, ...]) -> agent_pb2.DefinitionSource:
    doc = {
        "metadata": {"name": name, "version": "1.0.0"},
        "capabilities": list(capabilities),
        "tenant": tenant,
        "with": {"sandbox": "Tier1", "timeout": "10s", "memory": "64MB", "cpu": 0.1},
        "task": {"image": "symbi/base:bookworm", "command": ["python3", "-c", "print(1)"]},
    }
    return agent_pb2.DefinitionSource(
        format=agent_pb2.DEFINITION_FORMAT_JSON, text=json.dumps(doc), name=f"{name}.json"
    )


@dataclass
class BusStack:
    settings: Settings
    secured: SecuredNats | None
    nc: Client
    redis: aioredis.Redis
    lifecycle: LifecycleClient
    policy_addr: str = ""
    buses: list[AgentBus] = field(default_factory=list)

    async def agent(self, name: str, *, tenant: str = "t1", capabilities: tuple[str, ...] = ("send_messages",)) -> str:
        reply = await self.lifecycle.create_from(manifest(name, tenant, capabilities))
        assert not reply.issues, reply.issues
        agent_id = reply.agent.agent_id

        async def ready() -> bool:
            return (await self.lifecycle.get(agent_id)).state == agent_pb2.AGENT_STATE_READY

        await eventually(ready, timeout_s=10, what=f"agent {name} is ready")
        return agent_id

    async def credentials(self, agent_id: str, topics: tuple[str, ...] = ()) -> M.BusCredentials:
        request = M.BusCredentialsRequest(agent_id=agent_id, topics=topics, requested_by="pytest")
        return await natsio.request(self.nc, subjects.BUS_CREDENTIALS, request, M.BusCredentials, timeout=10)

    async def bus(self, agent_id: str, topics: tuple[str, ...] = (), **options: Any) -> AgentBus:
        creds = await self.credentials(agent_id, topics)
        bus = await AgentBus.connect(self.settings.nats, creds, self.settings.messaging, **options)
        self.buses.append(bus)
        return bus

    async def raw_agent_connection(self, creds: M.BusCredentials, errors: list[Exception]) -> Client:
        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        assert self.secured is not None
        return await nats.connect(
            self.secured.url,
            user_credentials=RawCredentials(natsauth.creds_text(creds.nats_user_jwt, bytes(creds.nats_user_seed))),
            inbox_prefix=creds.inbox_prefix,
            error_cb=on_error,
            allow_reconnect=False,
        )

    async def stats(self) -> M.MessagingStats:
        return await natsio.request(self.nc, subjects.BUS_STATS, M.BusStatsRequest(), M.MessagingStats, timeout=5)


BUS_STREAMS = (subjects.INBOX_STREAM, subjects.BUS_ADVISORY_STREAM, "DEADLETTER", subjects.AUDIT_STREAM, "POLICY")


async def start_bus_stack(
    settings: Settings, run_service: RunService, redis_url: str, secured: SecuredNats | None
) -> BusStack:
    settings = settings.with_overrides(
        {
            "messaging.inbox_ack_wait_s": 2.0,
            "messaging.inbox_max_deliver": 3,
            "messaging.max_payload_bytes": 8192,
            "messaging.rate_limit_per_s": 0,
            "lifecycle.outbox_interval_s": 0.2,
        }
    )
    nc = await natsio.connect(settings.nats, "pytest-bus")
    for name in BUS_STREAMS:
        await delete_stream(nc, name)
    policy = await run_service(POLICY, settings)
    addr = await register_policies(policy, POLICIES, "bus-tests.yaml")
    settings = settings.with_overrides({"policy.addr": addr})
    await run_service(LIFECYCLE, settings)
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    return BusStack(settings, secured, nc, redis, LifecycleClient(nc, actor="tester", timeout_s=10), addr)


async def stop_bus_stack(stack: BusStack) -> None:
    for bus in stack.buses:
        await bus.close()
    await stack.redis.aclose()
    await stack.nc.close()


@pytest_asyncio.fixture
async def bus_stack(
    secured_nats: SecuredNats, redis_url: str, tmp_path: Path, run_service: RunService, fresh_redis: None
) -> AsyncIterator[BusStack]:
    """Policy and lifecycle on the NATS server with operator-mode authorization."""
    base = make_settings(tmp_path / "state", secured_nats.url, redis_url)
    stack = await start_bus_stack(secured_nats.settings(base), run_service, redis_url, secured_nats)
    try:
        yield stack
    finally:
        await stop_bus_stack(stack)


@pytest_asyncio.fixture
async def open_bus_stack(
    settings: Settings, redis_url: str, run_service: RunService, fresh_redis: None
) -> AsyncIterator[BusStack]:
    """The same on the session's NATS, which authenticates nobody: the router checks every signature."""
    stack = await start_bus_stack(settings, run_service, redis_url, None)
    try:
        yield stack
    finally:
        await stop_bus_stack(stack)


class Inbox:
    """What a handler received, in order."""

    def __init__(self, fail: Callable[[Opened], bool] = lambda _: False) -> None:
        self.items: list[Opened] = []
        self.fail = fail
        self.attempts = 0

    async def __call__(self, opened: Opened) -> None:
        self.attempts += 1
        if self.fail(opened):
            raise RuntimeError("handler refuses this one")
        self.items.append(opened)

    @property
    def payloads(self) -> list[bytes]:
        return [item.plaintext for item in self.items]

    async def wait(self, count: int, timeout_s: float = 10) -> None:
        async def enough() -> bool:
            return len(self.items) >= count

        await eventually(enough, timeout_s=timeout_s, what=f"{count} messages handled")


async def stream_messages(nc: Client, stream: str, subject: str) -> list[bytes]:
    return [raw.data or b"" async for raw in natsio.stream_messages(nc.jetstream(timeout=5), stream, subject)]


async def dead_letters(nc: Client) -> list[common_pb2.DeadLetter]:
    return [
        common_pb2.DeadLetter.FromString(data)
        for data in await stream_messages(nc, "DEADLETTER", subjects.MESSAGE_DEAD_LETTER)
    ]


# -- direct messages -------------------------------------------------------------------


async def test_direct_message_is_encrypted_stored_delivered_and_audited(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice, bob = await bus_stack.bus(alice_id), await bus_stack.bus(bob_id)
    secret = b"the launch code is 0000"
    result = raise_for_status(await alice.send(bob_id, secret, content_type="text/plain"))
    assert result.status == M.DELIVERY_STATUS_ACCEPTED
    assert result.decision_id

    stored = await stream_messages(bus_stack.nc, subjects.INBOX_STREAM, subjects.bus_inbox(bob_id))
    assert len(stored) == 1
    assert secret not in stored[0]  # only ciphertext rests in the broker
    held = envelope.parse_wire(stored[0])
    # Only the two agents' pair key opens it: the router's topic keys and others' do not.
    key = envelope.pair_key(bob.keys, alice_id, await bob.identity(alice_id))
    header_bytes = held.header.SerializeToString(deterministic=True)
    assert envelope.decrypt(held, key, header_bytes) == secret

    inbox = Inbox()
    await bob.consume(inbox)
    await inbox.wait(1)
    assert inbox.payloads == [secret]
    assert inbox.items[0].header.sender == alice_id
    routed = await wait_for_audit(bus_stack.nc, "message.routed", lambda e: e.correlation_id == result.message_id)
    details = routed[0].details.fields
    assert details["recipient"].string_value == bob_id
    assert details["decision_id"].string_value == result.decision_id
    assert details["status"].string_value == "accepted"
    assert "launch" not in routed[0].details.__str__()


async def test_inbox_survives_restarts_with_no_loss_and_no_duplicate_processing(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice = await bus_stack.bus(alice_id)
    done = RedisProcessedLog(bus_stack.redis, bob_id)
    sent = []
    for i in range(6):  # bob is not even connected yet: the inbox keeps them
        sent.append(raise_for_status(await alice.send(bob_id, f"m{i}".encode())).message_id)

    first = await bus_stack.bus(bob_id, processed=done)
    inbox = Inbox()
    consumer = await first.consume(inbox, batch=2)
    await inbox.wait(3)
    await consumer.stop()
    await first.close()  # bob's runtime goes away mid-stream
    for i in range(6, 10):
        sent.append(raise_for_status(await alice.send(bob_id, f"m{i}".encode())).message_id)

    # One message was handled but its acknowledgement never reached the broker.
    raw_errors: list[Exception] = []
    raw = await bus_stack.raw_agent_connection(await bus_stack.credentials(bob_id), raw_errors)
    pull = await raw.jetstream().pull_subscribe_bind(
        durable=subjects.inbox_consumer(bob_id), stream=subjects.INBOX_STREAM
    )
    (unacked,) = await pull.fetch(1, timeout=5)
    lost_ack = envelope.parse_wire(unacked.data).header.message_id
    await done.mark(lost_ack)
    inbox.items.append(Opened(envelope.parse_wire(unacked.data).header, b"(handled before the crash)"))
    await raw.close()  # no ack: the broker redelivers after ack_wait

    second = await bus_stack.bus(bob_id, processed=done)
    await second.consume(inbox)
    await inbox.wait(10, timeout_s=15)
    ids = [item.header.message_id for item in inbox.items]
    assert sorted(ids) == sorted(sent)  # every message, each handled once

    async def skipped() -> bool:
        return second.stats.duplicates == 1

    await eventually(skipped, timeout_s=10, what="the redelivered message is skipped, not handled again")
    assert not raw_errors


async def test_a_resent_envelope_is_stored_and_handled_once(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice, bob = await bus_stack.bus(alice_id), await bus_stack.bus(bob_id)
    message = await alice.seal_to(bob_id, b"only once")
    assert (await alice.send_message(message)).status == M.DELIVERY_STATUS_ACCEPTED
    assert (await alice.send_message(message)).status == M.DELIVERY_STATUS_DUPLICATE
    inbox = Inbox()
    await bob.consume(inbox)
    await inbox.wait(1)
    await asyncio.sleep(0.5)
    assert inbox.payloads == [b"only once"]


# -- topics and requests ---------------------------------------------------------------


async def test_topics_reach_permitted_subscribers_only(bus_stack: BusStack) -> None:
    caps = ("publish_topics",)
    alice_id = await bus_stack.agent("alice", capabilities=caps)
    bob_id = await bus_stack.agent("bob", capabilities=caps)
    carol_id = await bus_stack.agent("carol")
    alice, bob = await bus_stack.bus(alice_id, ("news.daily",)), await bus_stack.bus(bob_id, ("news.daily",))
    received = Inbox()
    await bob.subscribe("news.daily", received)

    carol_creds = await bus_stack.credentials(carol_id, ("news.daily",))
    assert [r.topic for r in carol_creds.refused_topics] == ["news.daily"]
    assert subjects.bus_topic("news.daily") not in carol_creds.permissions.subscribe_allow
    errors: list[Exception] = []
    carol_raw = await bus_stack.raw_agent_connection(carol_creds, errors)
    eavesdropped: list[bytes] = []

    async def listen(msg: Any) -> None:
        eavesdropped.append(msg.data)

    await carol_raw.subscribe(subjects.bus_topic("news.daily"), cb=listen)
    await carol_raw.flush()
    carol = await bus_stack.bus(carol_id)
    with pytest.raises(PermissionDeniedError, match="may not subscribe"):
        await carol.topic_key("news.daily")

    result = raise_for_status(await alice.publish("news.daily", b"markets up"))
    assert result.status == M.DELIVERY_STATUS_ACCEPTED
    await received.wait(1)
    assert received.payloads == [b"markets up"]
    await asyncio.sleep(0.3)
    assert eavesdropped == []
    assert any("permissions violation" in str(e).lower() for e in errors)
    await carol_raw.close()


async def test_terminating_a_subscriber_rotates_its_topics_keys(bus_stack: BusStack) -> None:
    caps = ("publish_topics",)
    ids = [await bus_stack.agent(name, capabilities=caps) for name in ("alice", "bob", "carol")]
    alice, bob, carol = [await bus_stack.bus(agent_id, ("news.daily",)) for agent_id in ids]
    bob_got, carol_got = Inbox(), Inbox()
    await bob.subscribe("news.daily", bob_got)
    await carol.subscribe("news.daily", carol_got)
    raise_for_status(await alice.publish("news.daily", b"before"))
    await bob_got.wait(1)
    await carol_got.wait(1)
    old = carol.topic_keys.get_current("news.daily")
    assert old is not None

    await bus_stack.lifecycle.terminate(ids[2], reason="left the team")

    async def rotated() -> bool:
        return (await alice.topic_key("news.daily", refresh=True)).key_id != old.key_id

    await eventually(rotated, timeout_s=10, what="the topic moves to a new key")
    stale = envelope.seal(alice.keys, old, b"old key", kind=M.MESSAGE_KIND_TOPIC, topic="news.daily")
    assert (await alice.send_message(stale)).reason == M.MESSAGE_REJECT_REASON_STALE_KEY
    raise_for_status(await alice.publish("news.daily", b"after"))
    await bob_got.wait(2)  # bob fetches the new key by himself
    assert bob_got.payloads == [b"before", b"after"]

    async def carol_cannot_read() -> bool:
        return carol.stats.rejected.get("decrypt_failed", 0) >= 1

    # Carol's broker user is still valid and still subscribed, but the new key is not hers.
    await eventually(carol_cannot_read, timeout_s=5, what="carol cannot open what came after")
    assert carol_got.payloads == [b"before"]


async def test_publishing_without_permission_is_refused(bus_stack: BusStack) -> None:
    carol = await bus_stack.bus(await bus_stack.agent("carol"))
    # Carol forges a topic envelope with a key of her own making: policy still refuses it.
    fake = envelope.SymmetricKey(envelope.topic_key_id("news.daily", 0), b"k" * 32)
    message = envelope.seal(carol.keys, fake, b"fake news", kind=M.MESSAGE_KIND_TOPIC, topic="news.daily")
    result = await carol.send_message(message)
    assert result.status == M.DELIVERY_STATUS_REJECTED
    assert result.reason == M.MESSAGE_REJECT_REASON_POLICY_DENIED


async def test_request_reply_with_timeouts_and_errors(bus_stack: BusStack) -> None:
    alice_id = await bus_stack.agent("alice")
    bob_id = await bus_stack.agent("bob")
    idle_id = await bus_stack.agent("idle")
    alice, bob = await bus_stack.bus(alice_id), await bus_stack.bus(bob_id)

    async def answer(opened: Opened) -> bytes:
        if opened.plaintext == b"boom":
            raise ValueError("cannot do that")
        return opened.plaintext.upper()

    await bob.serve_requests(answer)
    reply = await alice.request(bob_id, b"ping", timeout=5)
    assert reply.plaintext == b"PING"
    assert reply.header.sender == bob_id
    assert reply.header.kind == M.MESSAGE_KIND_REPLY
    with pytest.raises(RemoteError, match="cannot do that"):
        await alice.request(bob_id, b"boom", timeout=5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await alice.request(idle_id, b"anyone?", timeout=0.5)
    assert time.monotonic() - started < 3


async def test_unsolicited_replies_are_refused(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice = await bus_stack.bus(alice_id)
    forged = await alice.seal_to(bob_id, b"you asked for this", kind=M.MESSAGE_KIND_REPLY, correlation_id="nope")
    result = await alice.send_message(forged)
    assert result.reason == M.MESSAGE_REJECT_REASON_POLICY_DENIED
    assert "no open request" in result.detail


# -- policy, rate limits, bad input ------------------------------------------------------


async def test_policy_denial_is_explained_audited_and_delivers_nothing(bus_stack: BusStack) -> None:
    alice_id = await bus_stack.agent("alice", tenant="t1")
    dave_id = await bus_stack.agent("dave", tenant="t2")
    alice = await bus_stack.bus(alice_id)
    result = await alice.send(dave_id, b"across tenants")
    assert result.status == M.DELIVERY_STATUS_REJECTED
    assert result.reason == M.MESSAGE_REJECT_REASON_POLICY_DENIED
    assert result.detail == "messages stay in their tenant"
    assert result.decision_id
    with pytest.raises(MessageRefusedError, match="POLICY_DENIED"):
        raise_for_status(result)
    assert await stream_messages(bus_stack.nc, subjects.INBOX_STREAM, subjects.bus_inbox(dave_id)) == []
    (event,) = await wait_for_audit(bus_stack.nc, "message.rejected", lambda e: e.correlation_id == result.message_id)
    assert event.details.fields["reason"].string_value == "MESSAGE_REJECT_REASON_POLICY_DENIED"
    assert event.details.fields["decision_id"].string_value == result.decision_id
    assert event.agent_id == alice_id


async def test_rate_limit_from_policy(bus_stack: BusStack) -> None:
    chatty_id, bob_id = await bus_stack.agent("chatty"), await bus_stack.agent("bob")
    chatty = await bus_stack.bus(chatty_id)
    results = [await chatty.send(bob_id, f"{i}".encode()) for i in range(4)]
    assert [r.status for r in results[:3]] == [M.DELIVERY_STATUS_ACCEPTED] * 3
    limited = results[3]
    assert limited.reason == M.MESSAGE_REJECT_REASON_RATE_LIMITED
    assert 0 < limited.retry_after.ToNanoseconds() / 1e9 <= 20
    with pytest.raises(ResourceExhaustedError):
        raise_for_status(limited)
    assert len(await stream_messages(bus_stack.nc, subjects.INBOX_STREAM, subjects.bus_inbox(bob_id))) == 3


async def test_bad_envelopes_are_refused_each_with_its_reason(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice = await bus_stack.bus(alice_id)
    out = subjects.bus_out(alice_id)

    async def raw_send(data: bytes) -> M.SendResult:
        reply = await alice.nc.request(out, data, timeout=5)
        return natsio.decode_reply(reply, M.SendResult, out)

    good = envelope.wire(await alice.seal_to(bob_id, b"hello"))
    impostor = AgentKeys.generate(alice_id)
    forged_key = envelope.pair_key(impostor, bob_id, await alice.identity(bob_id))
    cases = {
        "garbage": (b"\x00\xffnot an envelope", M.MESSAGE_REJECT_REASON_MALFORMED),
        "truncated": (good[: len(good) // 2], M.MESSAGE_REJECT_REASON_MALFORMED),
        "oversized": (
            envelope.wire(await alice.seal_to(bob_id, b"x" * 9000)),
            M.MESSAGE_REJECT_REASON_OVERSIZED,
        ),
        "unknown recipient": (
            envelope.wire(envelope.seal(alice.keys, forged_key, b"?", kind=M.MESSAGE_KIND_DIRECT, recipient="nobody")),
            M.MESSAGE_REJECT_REASON_UNKNOWN_RECIPIENT,
        ),
        "stale": (
            envelope.wire(
                envelope.seal(
                    alice.keys,
                    await alice.pair_key(bob_id),
                    b"old",
                    kind=M.MESSAGE_KIND_DIRECT,
                    recipient=bob_id,
                    now=time.time() - 3600,
                )
            ),
            M.MESSAGE_REJECT_REASON_STALE,
        ),
        "someone else's key": (
            envelope.wire(envelope.seal(impostor, forged_key, b"me", kind=M.MESSAGE_KIND_DIRECT, recipient=bob_id)),
            M.MESSAGE_REJECT_REASON_BAD_SIGNATURE,
        ),
        "impersonation": (
            envelope.wire(
                envelope.seal(
                    AgentKeys(bob_id, impostor.key_id, impostor.signing, impostor.agreement),
                    forged_key,
                    b"I am bob",
                    kind=M.MESSAGE_KIND_DIRECT,
                    recipient=alice_id,
                )
            ),
            M.MESSAGE_REJECT_REASON_UNKNOWN_SENDER,
        ),
    }
    for name, (data, reason) in cases.items():
        result = await raw_send(data)
        assert result.status == M.DELIVERY_STATUS_REJECTED, name
        assert result.reason == reason, (name, result.detail)
    expired = await alice.seal_to(bob_id, b"late", ttl_s=0.05)
    await asyncio.sleep(0.1)
    assert (await alice.send_message(expired)).reason == M.MESSAGE_REJECT_REASON_EXPIRED
    assert await stream_messages(bus_stack.nc, subjects.INBOX_STREAM, subjects.bus_inbox(bob_id)) == []
    stats = await bus_stack.stats()
    for reason_name in (
        "malformed",
        "oversized",
        "unknown_recipient",
        "stale",
        "bad_signature",
        "unknown_sender",
        "expired",
    ):
        assert stats.rejected_by_reason[reason_name] >= 1, reason_name


async def test_receivers_refuse_forgeries_and_replays_and_keep_dead_letters(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice, bob = await bus_stack.bus(alice_id), await bus_stack.bus(bob_id)
    answered: list[bytes] = []

    async def answer(opened: Opened) -> bytes:
        answered.append(opened.plaintext)
        return b"ok"

    await bob.serve_requests(answer)
    # A service-level eavesdropper (full broker access) captures a request on its way to bob ...
    captured: list[bytes] = []

    async def capture(msg: Any) -> None:
        captured.append(msg.data)

    await bus_stack.nc.subscribe(subjects.bus_request(bob_id), cb=capture)
    await bus_stack.nc.flush()
    assert (await alice.request(bob_id, b"transfer 10", timeout=5)).plaintext == b"ok"
    await eventually(lambda: bool(captured), timeout_s=5, what="request captured")
    # ... and plays it again: bob refuses it as a replay and handles it only once.
    await bus_stack.nc.publish(subjects.bus_request(bob_id), captured[0])
    # A signature-breaking tamper of the ciphertext goes in too.
    tampered = envelope.parse_wire(captured[0])
    tampered.ciphertext = bytes([tampered.ciphertext[0] ^ 1]) + tampered.ciphertext[1:]
    await bus_stack.nc.publish(subjects.bus_request(bob_id), envelope.wire(tampered))

    async def refused_twice() -> bool:
        return bob.stats.rejected.get("replay") == 1 and bob.stats.rejected.get("bad_signature") == 1

    await eventually(refused_twice, timeout_s=5, what="bob refuses the replay and the tampered copy")
    assert answered == [b"transfer 10"]

    async def reported() -> bool:
        stats = await bus_stack.stats()
        return (
            stats.rejected_by_reason["receiver_replay"] >= 1 and stats.rejected_by_reason["receiver_bad_signature"] >= 1
        )

    await eventually(reported, timeout_s=5, what="the router counts receivers' refusals")
    letters = await dead_letters(bus_stack.nc)
    assert {letter.error.code for letter in letters} >= {"replay", "bad_signature"}
    await wait_for_audit(
        bus_stack.nc, "message.rejected", lambda e: e.details.fields["rejected_by"].string_value == bob_id, count=2
    )


async def test_undeliverable_messages_become_dead_letters(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice, bob = await bus_stack.bus(alice_id), await bus_stack.bus(bob_id)
    raise_for_status(await alice.send(bob_id, b"poison"))
    raise_for_status(await alice.send(bob_id, b"fine"))
    inbox = Inbox(fail=lambda opened: opened.plaintext == b"poison")
    await bob.consume(inbox, retry_delays_s=(0.1,))
    await inbox.wait(1)

    async def parked() -> bool:
        return any(letter.error.code == "undeliverable" for letter in await dead_letters(bus_stack.nc))

    await eventually(parked, timeout_s=30, what="the poison message is dead-lettered")
    (letter,) = [x for x in await dead_letters(bus_stack.nc) if x.error.code == "undeliverable"]
    assert letter.attempts == 3
    assert envelope.parse_wire(letter.payload).header.sender == alice_id
    assert inbox.payloads == [b"fine"]
    assert inbox.attempts == 4
    assert await stream_messages(bus_stack.nc, subjects.INBOX_STREAM, subjects.bus_inbox(bob_id)) == []
    assert (await bus_stack.stats()).dead_letters >= 1
    await wait_for_audit(bus_stack.nc, "message.dead_lettered", lambda e: e.agent_id == bob_id)


async def test_a_terminated_agent_stops_receiving_and_its_inbox_is_kept(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    alice = await bus_stack.bus(alice_id)
    raise_for_status(await alice.send(bob_id, b"waiting"))
    await bus_stack.lifecycle.terminate(bob_id, reason="test")

    async def moved() -> bool:
        return any(letter.error.code == "recipient_ended" for letter in await dead_letters(bus_stack.nc))

    await eventually(moved, timeout_s=10, what="bob's waiting message becomes a dead letter")

    async def refused() -> bool:
        return (await alice.send(bob_id, b"too late")).reason == M.MESSAGE_REJECT_REASON_UNKNOWN_RECIPIENT

    await eventually(refused, timeout_s=5, what="sends to bob are refused")
    with pytest.raises(FailedPreconditionError):
        await bus_stack.credentials(bob_id)


# -- zero trust on the broker ------------------------------------------------------------


async def test_an_agent_cannot_reach_into_another_agents_subjects(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    sender = await bus_stack.bus(await bus_stack.agent("sender"))
    raise_for_status(await sender.send(bob_id, b"for bob only"))
    errors: list[Exception] = []
    alice_creds = await bus_stack.credentials(alice_id)
    bob_creds = await bus_stack.credentials(bob_id)
    mallory = await bus_stack.raw_agent_connection(alice_creds, errors)
    seen: list[bytes] = []

    async def grab(msg: Any) -> None:
        seen.append(msg.data)

    forbidden_reads = [
        subjects.bus_inbox(bob_id),
        subjects.bus_request(bob_id),
        subjects.bus_reply(bob_id),
        f"{bob_creds.inbox_prefix}.>",
        subjects.INBOX_STREAM,
        "symbi.audit.>",
        ">",
    ]
    for subject in forbidden_reads:
        await mallory.subscribe(subject, cb=grab)
    forbidden_writes = [
        subjects.bus_inbox(bob_id),
        subjects.bus_out(bob_id),
        subjects.bus_ctl(bob_id, "rejected"),
        f"$JS.API.CONSUMER.MSG.NEXT.{subjects.INBOX_STREAM}.{subjects.inbox_consumer(bob_id)}",
        f"$JS.API.CONSUMER.CREATE.{subjects.INBOX_STREAM}",
        f"$JS.API.STREAM.PURGE.{subjects.INBOX_STREAM}",
        subjects.BUS_CREDENTIALS,
        "symbi.audit.agent.created",
        subjects.lifecycle("terminate"),
    ]
    for subject in forbidden_writes:
        await mallory.publish(subject, b"{}", reply=f"{alice_creds.inbox_prefix}.x")
    await mallory.flush()
    js = mallory.jetstream(timeout=1)
    pull = await js.pull_subscribe_bind(durable=subjects.inbox_consumer(bob_id), stream=subjects.INBOX_STREAM)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await pull.fetch(1, timeout=1)

    async def all_refused() -> bool:
        text = " ".join(str(e).lower() for e in errors)
        return all(s.lower() in text for s in forbidden_writes) and all(s.lower() in text for s in forbidden_reads)

    await eventually(all_refused, timeout_s=5, what="every forbidden subject refused by the broker")
    assert seen == []
    await mallory.close()
    # Bob's message was neither read nor disturbed: bob gets it.
    bob = await bus_stack.bus(bob_id)
    inbox = Inbox()
    await bob.consume(inbox)
    await inbox.wait(1)
    assert inbox.payloads == [b"for bob only"]


async def test_the_broker_refuses_forged_and_expired_credentials(bus_stack: BusStack) -> None:
    alice_id = await bus_stack.agent("alice")
    creds = await bus_stack.credentials(alice_id)
    assert bus_stack.secured is not None
    claims = natsauth.decode_jwt(
        creds.nats_user_jwt, trusted_issuers=[bus_stack.secured.authority.account_signing.public]
    )
    assert claims["sub"] == creds.permissions.user
    # Widen the permissions and re-sign with a key the account does not trust.
    rogue = natsauth.NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT)
    claims["nats"]["pub"] = {"allow": [">"]}
    forged = natsauth.encode_jwt({k: v for k, v in claims.items() if k not in ("iss", "jti")}, rogue)
    expired = bus_stack.secured.authority.issuer.issue(f"agent:{alice_id}", publish_allow=[], ttl_s=0.001)
    await asyncio.sleep(1.1)
    for jwt, seed in ((forged, bytes(creds.nats_user_seed)), (expired.jwt, expired.user.seed)):
        with pytest.raises(Exception, match=r"(?i)authoriz|expired"):
            await nats.connect(
                bus_stack.secured.url,
                user_credentials=RawCredentials(natsauth.creds_text(jwt, seed)),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )
    events = await audit_events(bus_stack.nc, "bus.credentials_issued")
    assert any(e.agent_id == alice_id for e in events)
    assert all("seed" not in str(e.details) for e in events)


async def test_agents_cannot_get_each_others_credentials(bus_stack: BusStack) -> None:
    alice_id, bob_id = await bus_stack.agent("alice"), await bus_stack.agent("bob")
    errors: list[Exception] = []
    mallory = await bus_stack.raw_agent_connection(await bus_stack.credentials(alice_id), errors)
    request = M.BusCredentialsRequest(agent_id=bob_id)
    with pytest.raises(Exception):  # noqa: B017 - the broker drops it: a timeout or a permissions error
        await mallory.request(subjects.BUS_CREDENTIALS, request.SerializeToString(), timeout=1)
    await mallory.close()

    async def refused() -> bool:
        return any("permissions violation" in str(e).lower() for e in errors)

    await eventually(refused, timeout_s=5, what="the broker refuses the request")


# -- a broker that authenticates nobody --------------------------------------------------


async def test_without_broker_auth_the_router_verifies_every_signature(open_bus_stack: BusStack) -> None:
    stack = open_bus_stack
    alice_id, bob_id = await stack.agent("alice"), await stack.agent("bob")
    creds = await stack.credentials(alice_id)
    assert creds.nats_user_jwt == ""  # nothing to issue: the broker has no users
    alice, bob = await stack.bus(alice_id), await stack.bus(bob_id)
    # Anyone can publish on alice's subject here; a forger who knows her key id still fails.
    impostor = AgentKeys(alice_id, alice.keys.key_id, AgentKeys.generate(alice_id).signing, alice.keys.agreement)
    forged = envelope.seal(
        impostor, await alice.pair_key(bob_id), b"pay mallory", kind=M.MESSAGE_KIND_DIRECT, recipient=bob_id
    )
    result = await alice.send_message(forged)
    assert result.reason == M.MESSAGE_REJECT_REASON_BAD_SIGNATURE
    assert "does not verify" in result.detail
    raise_for_status(await alice.send(bob_id, b"genuine"))
    inbox = Inbox()
    await bob.consume(inbox)
    await inbox.wait(1)
    assert inbox.payloads == [b"genuine"]


# -- docs/messaging.md -------------------------------------------------------------------

DOC = (Path(__file__).resolve().parents[2] / "docs" / "messaging.md").read_text()


def fenced(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", DOC, re.S | re.M) if lang == language]


async def test_the_documented_example_and_policy_work(bus_stack: BusStack) -> None:
    (policy_text,) = fenced("yaml")
    (example,) = fenced("python")
    assert bus_stack.policy_addr
    client = PolicyClient(bus_stack.policy_addr)
    try:
        await client.register(policy_text, name="messaging-example.yaml")
    finally:
        await client.close()
    alice_id = await bus_stack.agent("alice", tenant="research")
    bob_id = await bus_stack.agent("bob", tenant="research")
    vault_id = await bus_stack.agent("vault", tenant="research")
    auditor_id = await bus_stack.agent("auditor", tenant="research")
    alice = await bus_stack.bus(alice_id, ("research.findings",))
    bob = await bus_stack.bus(bob_id, ("research.findings",))
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/messaging.md", "exec"), namespace)
    out = await namespace["example"](alice, bob)
    assert out["status"] == M.DELIVERY_STATUS_ACCEPTED
    assert out["reply"] == b"PING"
    got = out["got"]
    await eventually(lambda: sorted(got) == [b"hello", b"new paper"], timeout_s=10, what="bob got both messages")
    vault = await bus_stack.bus(vault_id)
    refused = await vault.send(alice_id, b"secrets")
    assert refused.detail == "the vault talks only to the auditor"
    raise_for_status(await vault.send(auditor_id, b"secrets"))
