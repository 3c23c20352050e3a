"""The audit service on a real NATS: nothing lost while it is down, nothing twice, every query and proof."""

from __future__ import annotations

import asyncio
import json
import math
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from symbi_testing.checks import components, eventually
from symbi_testing.fixtures import RunService

from symbi_audit import canonical, storage
from symbi_audit.merkle import verify_consistency, verify_inclusion
from symbi_audit.service import SPEC
from symbi_audit.verify import verify_directory
from symbi_common import audit_events, natsio, subjects
from symbi_common.errors import NotFoundError
from symbi_common.ids import new_id
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_proto.v1 import audit_pb2, common_pb2, health_pb2

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_audit_streams")]


@pytest.fixture
def audit_settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        {"audit.lease_ttl_s": 1.0, "audit.checkpoint_interval_s": 0.1, "audit.checkpoint_every": 50}
    )


R = TypeVar("R", bound=Message)


async def ask(nc: Client, subject: str, message: Message, reply: type[R]) -> R:
    return await natsio.request(nc, subject, message, reply, timeout=10)


async def size_of(nc: Client) -> int:
    reply = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(page=common_pb2.PageRequest(page_size=1)),
                      audit_pb2.AuditQueryResponse)  # fmt: skip
    return int(reply.page.total_size)


async def wait_size(nc: Client, size: int, timeout_s: float = 20) -> None:
    async def reached() -> bool:
        try:
            return await size_of(nc) >= size
        except Exception:
            return False

    await eventually(reached, timeout_s=timeout_s, what=f"the log holds {size} events")


async def publish(nc: Client, n: int, *, agent: str = "agent-1", start: int = 0) -> list[audit_pb2.AuditEvent]:
    publisher = audit_events.AuditPublisher(nc.jetstream(), "tests")
    events = []
    for i in range(start, start + n):
        events.append(await publisher.record("tool.call", agent_id=agent, details={"n": i}, data_labels=["phi"]))
    return events


def trusted(settings: Settings) -> dict[str, Ed25519PublicKey]:
    from symbi_audit.keys import KeyRing

    first = KeyRing.open(settings.audit_storage / "keys", create=False).keys[0]
    return {first.key_id: first.public}


async def test_events_sent_while_it_was_down_arrive_in_order_once(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    early = await publish(nc, 30)  # no audit service yet: they wait in the stream
    runner = await run_service(SPEC, audit_settings)
    await wait_size(nc, 31)
    await runner.shutdown()
    later = await publish(nc, 20, start=30)
    buffer = audit_events.AuditBuffer(nc.jetstream())
    batched = [audit_events.build_event("tool.call", source="tests", details={"n": 50 + i}) for i in range(25)]
    task = asyncio.create_task(buffer.run())
    for event in batched:
        assert buffer.offer(event)
    assert await buffer.flush(10)
    task.cancel()
    await run_service(SPEC, audit_settings)
    await wait_size(nc, 1 + 30 + 20 + 25)
    reply = await ask(
        nc, subjects.AUDIT_QUERY,
        audit_pb2.AuditQueryRequest(event_types=["tool.*"], page=common_pb2.PageRequest(page_size=1000)),
        audit_pb2.AuditQueryResponse,
    )  # fmt: skip
    stored = list(reply.events)
    assert [e.event_id for e in stored] == [e.event_id for e in [*early, *later, *batched]]
    assert [e.sequence for e in stored] == list(range(1, 76))
    result = await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(verify_event_signatures=True),
                       audit_pb2.VerifyResponse)  # fmt: skip
    assert result.ok, result.failure
    offline = verify_directory(audit_settings.audit_storage, trusted(audit_settings), to_sequence=76)
    assert offline.ok
    assert offline.checkpoint.root_hash == result.checkpoint.root_hash


async def test_a_redelivered_event_is_stored_once(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    await run_service(SPEC, audit_settings)
    event = audit_events.build_event("tool.call", source="tests", details={"n": 1})
    js = nc.jetstream()
    await audit_events.ensure_stream(js)
    for msg_id in ("first", "second"):  # different Nats-Msg-Id: the stream keeps both, the log one
        await natsio.publish_durable(js, subjects.audit_event("tool.call"), event, msg_id=msg_id)
    marker = await publish(nc, 1, start=99)
    await wait_size(nc, 3)
    await asyncio.sleep(0.3)
    reply = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(event_types=["tool.call"]),
                      audit_pb2.AuditQueryResponse)  # fmt: skip
    assert [e.event_id for e in reply.events] == [event.event_id, marker[0].event_id]


async def test_malformed_events_are_dead_lettered_and_never_break_the_chain(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    runner = await run_service(SPEC, audit_settings)
    js = nc.jetstream()
    good = audit_events.build_event("tool.call", source="tests")
    reserved = audit_events.build_event("tool.call", source="tests")
    reserved.event_type = "audit.key_rotated"
    preset = audit_events.build_event("tool.call", source="tests")
    preset.sequence = 7
    no_time = audit_events.build_event("tool.call", source="tests")
    no_time.ClearField("timestamp")
    cases = [
        (subjects.audit_event("tool.call"), b"\xff\xfe not protobuf", "not a valid symbi.v1.AuditEvent"),
        ("symbi.audit.audit.key_rotated", reserved.SerializeToString(), "reserved for the audit log itself"),
        (subjects.audit_event("tool.call"), preset.SerializeToString(), "assigned by the log"),
        (subjects.audit_event("tool.call"), no_time.SerializeToString(), "timestamp is missing"),
        (subjects.audit_event("other.type"), good.SerializeToString(), "published on symbi.audit.other.type"),
    ]
    for subject, data, _ in cases:
        await js.publish(subject, data, headers={"Nats-Msg-Id": new_id()})
    batch = audit_pb2.AuditBatch(batch_id=new_id(), events=[good, preset])
    await js.publish(subjects.AUDIT_BATCH, batch.SerializeToString(), headers={"Nats-Msg-Id": batch.batch_id})
    await wait_size(nc, 2)
    sub = await js.pull_subscribe(
        subjects.AUDIT_DEAD_LETTER, stream="DEADLETTER",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )  # fmt: skip
    letters = [common_pb2.DeadLetter.FromString(m.data) for m in await sub.fetch(10, timeout=5)]
    reasons = [letter.error.message for letter in letters]
    for _, _, expected in cases:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert sum("assigned by the log" in r for r in reasons) == 2  # the single one and the one in the batch
    assert letters[0].payload == b"\xff\xfe not protobuf"
    reply = await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(), audit_pb2.VerifyResponse)
    assert reply.ok
    assert await size_of(nc) == 2  # the genesis and the one good event
    samples = runner.metrics.get_sample_value("symbi_audit_dead_letters_total")
    assert samples == len(cases) + 1


async def test_queries_filter_and_page(run_service: RunService, nc: Client, audit_settings: Settings) -> None:
    await run_service(SPEC, audit_settings)
    await publish(nc, 12, agent="alice")
    await publish(nc, 8, agent="bob")
    await wait_size(nc, 21)
    pages, token = [], ""
    while True:
        request = audit_pb2.AuditQueryRequest(
            agent_id="alice", page=common_pb2.PageRequest(page_size=5, page_token=token)
        )
        reply = await ask(nc, subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse)
        pages.append([e.details["n"] for e in reply.events])
        token = reply.page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [n for page in pages for n in page] == list(range(12))
    newest = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(agent_id="bob", descending=True,
                       page=common_pb2.PageRequest(page_size=2)), audit_pb2.AuditQueryResponse)  # fmt: skip
    assert [e.agent_id for e in newest.events] == ["bob", "bob"]
    assert newest.events[0].sequence > newest.events[1].sequence
    assert newest.page.total_size == 8
    nothing = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(event_types=["policy.*"]),
                        audit_pb2.AuditQueryResponse)  # fmt: skip
    assert list(nothing.events) == []


async def test_proofs_check_out_against_signed_checkpoints(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    await run_service(SPEC, audit_settings)
    events = await publish(nc, 40)
    await wait_size(nc, 41)
    keys = await ask(nc, subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest(), audit_pb2.ListSigningKeysResponse)
    public = Ed25519PublicKey.from_public_bytes(keys.keys[0].public_key)

    async def covered() -> bool:
        cp = await ask(nc, subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint)
        return int(cp.tree_size) >= 41

    await eventually(covered, what="a checkpoint covers every event")
    reply = await ask(nc, subjects.AUDIT_INCLUSION, audit_pb2.InclusionProofRequest(event_id=events[17].event_id),
                      audit_pb2.InclusionProofResponse)  # fmt: skip
    cp, proof, event = reply.checkpoint, reply.proof, reply.event
    public.verify(cp.signature, canonical.checkpoint_body(cp))
    assert event.event_id == events[17].event_id
    assert canonical.leaf_hash(event) == proof.leaf_hash
    assert verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.path), cp.root_hash)
    listing = await ask(nc, subjects.AUDIT_CHECKPOINTS, audit_pb2.ListCheckpointsRequest(),
                        audit_pb2.ListCheckpointsResponse)  # fmt: skip
    sizes = [c.tree_size for c in listing.checkpoints]
    assert sizes == sorted(sizes)
    assert sizes[0] == 1
    request = audit_pb2.ConsistencyProofRequest(first_tree_size=sizes[0], second_tree_size=sizes[-1])
    consistency = await ask(nc, subjects.AUDIT_CONSISTENCY, request, audit_pb2.ConsistencyProofResponse)
    first, second = consistency.first, consistency.second
    assert verify_consistency(first.tree_size, second.tree_size, first.root_hash, second.root_hash,
                              list(consistency.proof.path))  # fmt: skip
    with pytest.raises(NotFoundError):
        await ask(nc, subjects.AUDIT_INCLUSION, audit_pb2.InclusionProofRequest(event_id=new_id()),
                  audit_pb2.InclusionProofResponse)  # fmt: skip


async def test_the_live_feed_and_key_rotation(run_service: RunService, nc: Client, audit_settings: Settings) -> None:
    await run_service(SPEC, audit_settings)
    await wait_size(nc, 1)
    feed: asyncio.Queue[audit_pb2.AuditBatch] = asyncio.Queue()

    async def on_batch(msg: Msg) -> None:
        feed.put_nowait(audit_pb2.AuditBatch.FromString(msg.data))

    await nc.subscribe(subjects.AUDIT_APPENDED, cb=on_batch)
    (sent,) = await publish(nc, 1)
    got = await asyncio.wait_for(feed.get(), 10)
    assert got.events[0].event_id == sent.event_id
    assert got.events[0].signature
    assert got.events[0].chain_hash
    old_keys = await ask(nc, subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest(), audit_pb2.ListSigningKeysResponse)
    new_key = await ask(nc, subjects.AUDIT_ROTATE, audit_pb2.RotateSigningKeyRequest(reason="test", requested_by="ops"),
                        audit_pb2.SigningKey)  # fmt: skip
    (after,) = await publish(nc, 1, start=5)
    await wait_size(nc, 4)
    reply = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(event_types=["audit.*"]),
                      audit_pb2.AuditQueryResponse)  # fmt: skip
    rotation = reply.events[-1]
    assert rotation.event_type == "audit.key_rotated"
    assert rotation.details["reason"] == "test (requested by ops)"
    assert rotation.key_id == old_keys.keys[0].key_id
    mine = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(agent_id="agent-1"),
                     audit_pb2.AuditQueryResponse)  # fmt: skip
    last = mine.events[-1]
    assert last.event_id == after.event_id
    assert last.key_id == new_key.key_id
    assert (await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(verify_event_signatures=True),
                      audit_pb2.VerifyResponse)).ok  # fmt: skip


async def test_one_writer_at_a_time_and_a_standby_takes_over(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    first = await run_service(SPEC, audit_settings)
    await wait_size(nc, 1)
    second = await run_service(SPEC, audit_settings)  # same storage, same NATS
    roles = await asyncio.gather(*(_role(r) for r in (first, second)))
    assert sorted(roles) == ["standby", "writer"]
    writer, standby = (first, second) if roles[0] == "writer" else (second, first)
    await publish(nc, 10)
    await wait_size(nc, 11)
    await writer.shutdown()
    await eventually(lambda: _is(standby, "writer"), timeout_s=15, what="the standby took over")
    await publish(nc, 10, start=10)
    await wait_size(nc, 21)
    result = verify_directory(audit_settings.audit_storage, trusted(audit_settings), to_sequence=21)
    assert result.ok, result.failure
    events = [e for e in _all(audit_settings.audit_storage) if e.event_type == "tool.call"]
    assert [int(canonical.struct_to_python(e.details)["n"]) for e in events] == list(range(20))  # none lost or twice


async def _role(runner: ServiceRunner) -> str:
    async def settled() -> bool:
        detail = components(await runner.health.snapshot())["writer"].detail
        return detail.startswith("writer") or "the writer is audit-" in detail

    await eventually(settled, what="a writer was chosen")
    return "writer" if components(await runner.health.snapshot())["writer"].detail.startswith("writer") else "standby"


async def _is(runner: ServiceRunner, role: str) -> bool:
    return components(await runner.health.snapshot())["writer"].detail.startswith(role)


def _all(directory: Path) -> list[audit_pb2.AuditEvent]:
    return [
        audit_pb2.AuditEvent.FromString(item[1])  # type: ignore[index]
        for _, path in storage.segments(directory / "log")
        for item in storage.read_records(path)
    ]


async def test_a_torn_write_is_repaired_on_restart(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    runner = await run_service(SPEC, audit_settings)
    await publish(nc, 5)
    await wait_size(nc, 6)
    await runner.shutdown()
    segment = storage.segments(audit_settings.audit_storage / "log")[-1][1]
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x10\x00garbage")
    await run_service(SPEC, audit_settings)
    await wait_size(nc, 7)
    reply = await ask(nc, subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest(event_types=["audit.log_repaired"]),
                      audit_pb2.AuditQueryResponse)  # fmt: skip
    assert len(reply.events) == 1
    assert (await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(), audit_pb2.VerifyResponse)).ok


async def test_storage_is_private(run_service: RunService, nc: Client, audit_settings: Settings) -> None:
    await run_service(SPEC, audit_settings)
    await wait_size(nc, 1)
    assert stat.S_IMODE(audit_settings.audit_storage.stat().st_mode) == 0o700
    meta = json.loads((audit_settings.audit_storage / "log.json").read_text())
    assert meta["format"] == 1


async def test_the_chain_status_follows_periodic_verification(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    runner = await run_service(SPEC, audit_settings.with_overrides({"audit.verify_interval_s": 0.2}))
    registry = runner.metrics

    def chain() -> float | None:
        return registry.get_sample_value("symbi_audit_chain_verified")

    await publish(nc, 20)
    await wait_size(nc, 21)
    await eventually(lambda: chain() == 1, what="a verification of the whole log")
    assert (registry.get_sample_value("symbi_audit_verified_events") or 0) >= 21
    assert (registry.get_sample_value("symbi_audit_verifications_total", {"result": "ok"}) or 0) >= 1

    segment = storage.segments(audit_settings.audit_storage / "log")[0][1]
    offset = [item[0] for item in storage.read_records(segment)][5]  # type: ignore[index]
    with open(segment, "r+b") as f:  # tampering at rest, behind the writer's back
        f.seek(offset + 12)
        byte = f.read(1)
        f.seek(offset + 12)
        f.write(bytes([byte[0] ^ 0x40]))
    await eventually(lambda: chain() == 0, what="the next verification notices")
    assert (registry.get_sample_value("symbi_audit_verifications_total", {"result": "failed"}) or 0) >= 1
    integrity = components(await runner.health.snapshot())["integrity"]
    assert integrity.status == health_pb2.SERVING_STATUS_DEGRADED
    assert integrity.detail.startswith("verification failed")


async def test_the_chain_status_is_unknown_until_verified(
    run_service: RunService, nc: Client, audit_settings: Settings
) -> None:
    runner = await run_service(SPEC, audit_settings.with_overrides({"audit.verify_interval_s": 0}))
    await publish(nc, 3)
    await wait_size(nc, 4)
    status = runner.metrics.get_sample_value("symbi_audit_chain_verified")
    assert status is not None
    assert math.isnan(status)  # not verified since start: neither good nor bad
    partial = await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(to_sequence=1), audit_pb2.VerifyResponse)
    assert partial.ok
    assert runner.metrics.get_sample_value("symbi_audit_chain_verified") != 1  # part of the log proves nothing of all
    assert (await ask(nc, subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest(), audit_pb2.VerifyResponse)).ok
    assert runner.metrics.get_sample_value("symbi_audit_chain_verified") == 1
