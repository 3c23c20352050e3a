"""The secure envelope keeps its promises: AES-256-GCM under the documented key, Ed25519 over
header and ciphertext, and a distinct refusal for every kind of bad envelope."""

from __future__ import annotations

import hashlib
import struct
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_common import envelope
from symbi_common.envelope import AgentKeys, EnvelopeOpener, EnvelopeRejected, SymmetricKey, TopicKeyring
from symbi_common.errors import PermissionDeniedError
from symbi_common.replay import MemoryReplayCache
from symbi_proto.v1 import agent_pb2, message_pb2

R = message_pb2
ALICE, BOB, MALLORY = AgentKeys.generate("alice"), AgentKeys.generate("bob"), AgentKeys.generate("mallory")


class Directory:
    def __init__(self, *agents: AgentKeys) -> None:
        self.known = {agent.agent_id: agent.identity() for agent in agents}

    def identity(self, agent_id: str) -> agent_pb2.AgentIdentity | None:
        return self.known.get(agent_id)


def bob_opener(*, clock: float | None = None, directory: Directory | None = None, epoch: int = 0) -> EnvelopeOpener:
    directory = directory or Directory(ALICE, BOB)

    def keys(header: message_pb2.MessageHeader) -> SymmetricKey | None:
        sender = directory.identity(header.sender)
        return None if sender is None else envelope.pair_key(BOB, header.sender, sender, epoch)

    return EnvelopeOpener(
        directory,
        MemoryReplayCache(),
        keys,
        recipient="bob",
        max_payload_bytes=64 * 1024,
        clock=(lambda: clock) if clock is not None else time.time,
    )


def to_bob(plaintext: bytes = b'{"ask": "summarise"}', **options: object) -> message_pb2.SecureMessage:
    key = envelope.pair_key(ALICE, "bob", BOB.identity())
    return envelope.seal(ALICE, key, plaintext, kind=R.MESSAGE_KIND_DIRECT, recipient="bob", **options)  # type: ignore[arg-type]


async def test_direct_message_round_trip() -> None:
    message = to_bob(b"hello bob", content_type="text/plain")
    opened = await bob_opener().open_bytes(message.SerializeToString())
    assert opened.plaintext == b"hello bob"
    assert opened.header.sender == "alice"
    assert opened.header.content_type == "text/plain"
    assert b"hello bob" not in message.SerializeToString()


async def test_payload_is_aes_256_gcm_under_the_documented_pair_key() -> None:
    """Re-derive the key from the construction in the module docstring and decrypt by hand."""
    message = to_bob(b"secret plan")
    alice_pub = ALICE.identity().agreement_public_key
    bob_pub = BOB.identity().agreement_public_key
    shared = BOB.agreement.exchange(X25519PublicKey.from_public_bytes(alice_pub))
    assert shared == X25519PrivateKey.from_private_bytes(ALICE.private_bytes()[1]).exchange(
        X25519PublicKey.from_public_bytes(bob_pub)
    )
    info = b"symbi/v1/pairalice\x00bob\x00" + struct.pack(">I", 0)
    key = HKDF(SHA256(), 32, salt=hashlib.sha256(alice_pub + bob_pub).digest(), info=info).derive(shared)
    assert len(key) == 32  # AES-256
    header_bytes = message.header.SerializeToString(deterministic=True)
    assert AESGCM(key).decrypt(message.header.nonce, message.ciphertext, header_bytes) == b"secret plan"
    assert message.header.key_id == f"pair:0:{hashlib.sha256(key).hexdigest()[:16]}"
    framed = b"symbi-envelope-v1\x00" + struct.pack(">I", len(header_bytes)) + header_bytes + message.ciphertext
    Ed25519PublicKey.from_public_bytes(ALICE.identity().signing_public_key).verify(message.signature, framed)


def test_pair_keys_agree_and_separate() -> None:
    ab = envelope.pair_key(ALICE, "bob", BOB.identity())
    assert ab == envelope.pair_key(BOB, "alice", ALICE.identity())
    assert ab != envelope.pair_key(ALICE, "bob", BOB.identity(), epoch=1)  # rotation
    assert ab.key != envelope.pair_key(ALICE, "mallory", MALLORY.identity()).key
    assert envelope.pair_key(MALLORY, "bob", BOB.identity()).key != ab.key


async def test_non_canonical_encodings_are_refused() -> None:
    message = to_bob(now=int(time.time()) + 0.9)  # nanos >= 2**28: a five-byte varint
    wire = bytearray(message.SerializeToString(deterministic=True))
    before = message_pb2.MessageHeader()
    before.CopyFrom(message.header)
    for name in ("timestamp", "nonce", "key_id", "signing_key_id", "content_type", "envelope_version"):
        before.ClearField(name)  # fields 1-5 precede the timestamp (field 6) on the wire
    timestamp = 3 + len(before.SerializeToString(deterministic=True))  # after the header's tag and length
    assert wire[timestamp] == 0x32  # field 6, length-delimited
    nanos_end = timestamp + 1 + wire[timestamp + 1]
    assert wire[nanos_end] < 0x10  # last byte of the nanos varint
    wire[nanos_end] |= 0x10  # adds 2**32: an int32 parses to the same value
    parsed = message_pb2.SecureMessage.FromString(bytes(wire))
    assert parsed == message
    with pytest.raises(EnvelopeRejected, match="canonically") as info:
        await bob_opener().open_bytes(bytes(wire))
    assert info.value.reason == R.MESSAGE_REJECT_REASON_MALFORMED


def test_nonces_are_fresh() -> None:
    nonces = {to_bob().header.nonce for _ in range(200)}
    assert len(nonces) == 200


async def test_topic_keys_rotate_and_old_epochs_still_open() -> None:
    ring = TopicKeyring()
    first = ring.current("research")
    old = envelope.seal(ALICE, first, b"v0", kind=R.MESSAGE_KIND_TOPIC, topic="research")
    second = ring.rotate("research")
    assert second.key_id == "topic:research:1"
    assert second.key != first.key
    new = envelope.seal(ALICE, ring.current("research"), b"v1", kind=R.MESSAGE_KIND_TOPIC, topic="research")
    opener = EnvelopeOpener(Directory(ALICE), MemoryReplayCache(), lambda h: ring.get(h.key_id), recipient="bob")
    assert (await opener.open(old)).plaintext == b"v0"
    assert (await opener.open(new)).plaintext == b"v1"
    stranger = TopicKeyring()
    outsider = EnvelopeOpener(Directory(ALICE), MemoryReplayCache(), lambda h: stranger.get(h.key_id), recipient="bob")
    with pytest.raises(EnvelopeRejected) as info:
        await outsider.open(envelope.seal(ALICE, ring.current("research"), b"x", kind=R.MESSAGE_KIND_TOPIC))
    assert info.value.reason == R.MESSAGE_REJECT_REASON_DECRYPT_FAILED


def _resign(message: message_pb2.SecureMessage, signer: AgentKeys = ALICE) -> message_pb2.SecureMessage:
    header_bytes = message.header.SerializeToString(deterministic=True)
    message.signature = signer.signing.sign(envelope.signed_bytes(header_bytes, message.ciphertext))
    return message


def _unknown_field(message: message_pb2.SecureMessage) -> bytes:
    return message.SerializeToString() + b"\xa0\x06\x01"  # field 100, varint 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"\xff\xfe garbage", R.MESSAGE_REJECT_REASON_MALFORMED),
        (lambda: to_bob(b"x" * (65 * 1024)).SerializeToString(), R.MESSAGE_REJECT_REASON_OVERSIZED),
        (lambda: _unknown_field(to_bob()), R.MESSAGE_REJECT_REASON_MALFORMED),
        (lambda: _version(to_bob(), 2).SerializeToString(), R.MESSAGE_REJECT_REASON_MALFORMED),
        (lambda: _sender(to_bob(), "carol").SerializeToString(), R.MESSAGE_REJECT_REASON_UNKNOWN_SENDER),
        (lambda: _resign(to_bob(), MALLORY).SerializeToString(), R.MESSAGE_REJECT_REASON_BAD_SIGNATURE),
        (lambda: _flip_ciphertext(to_bob()).SerializeToString(), R.MESSAGE_REJECT_REASON_BAD_SIGNATURE),
        (lambda: _recipient(to_bob(), "dave").SerializeToString(), R.MESSAGE_REJECT_REASON_UNKNOWN_RECIPIENT),
        (lambda: to_bob(now=time.time() - 3600).SerializeToString(), R.MESSAGE_REJECT_REASON_STALE),
        (lambda: to_bob(now=time.time() + 3600).SerializeToString(), R.MESSAGE_REJECT_REASON_STALE),
        (lambda: to_bob(ttl_s=0.5, now=time.time() - 1).SerializeToString(), R.MESSAGE_REJECT_REASON_EXPIRED),
        (lambda: _key_id(to_bob(), "pair:9:0000").SerializeToString(), R.MESSAGE_REJECT_REASON_DECRYPT_FAILED),
        (lambda: _tag(to_bob()).SerializeToString(), R.MESSAGE_REJECT_REASON_DECRYPT_FAILED),
    ],
    ids=[
        "garbage", "oversized", "unknown-field", "version", "unknown-sender", "forged-signature",
        "tampered-ciphertext", "wrong-recipient", "stale-past", "stale-future", "expired", "unknown-key", "bad-tag",
    ],
)  # fmt: skip
async def test_each_bad_envelope_is_refused_with_its_reason(make: object, reason: envelope.Reason) -> None:
    with pytest.raises(EnvelopeRejected) as info:
        await bob_opener().open_bytes(make())  # type: ignore[operator]
    assert info.value.reason == reason, info.value
    assert isinstance(info.value, PermissionDeniedError)
    assert info.value.metadata["reason"] == R.MessageRejectReason.Name(reason)


async def test_replay_is_refused_after_the_first_delivery() -> None:
    data = to_bob().SerializeToString()
    opener = bob_opener()
    await opener.open_bytes(data)
    with pytest.raises(EnvelopeRejected) as info:
        await opener.open_bytes(data)
    assert info.value.reason == R.MESSAGE_REJECT_REASON_REPLAY


async def test_forged_envelopes_do_not_poison_the_replay_cache() -> None:
    genuine = to_bob()
    forged = message_pb2.SecureMessage()
    forged.CopyFrom(genuine)
    _resign(forged, MALLORY)
    opener = bob_opener()
    with pytest.raises(EnvelopeRejected):
        await opener.open(forged)
    assert (await opener.open(genuine)).plaintext  # its id was not burnt by the forgery


async def test_a_rotated_signing_key_is_refused_until_the_directory_knows_it() -> None:
    rotated = AgentKeys.generate("alice")
    message = envelope.seal(
        rotated, envelope.pair_key(rotated, "bob", BOB.identity()), b"x", kind=R.MESSAGE_KIND_DIRECT, recipient="bob"
    )
    with pytest.raises(EnvelopeRejected) as info:
        await bob_opener().open(message)
    assert info.value.reason == R.MESSAGE_REJECT_REASON_BAD_SIGNATURE
    assert (await bob_opener(directory=Directory(rotated, BOB)).open(message)).plaintext == b"x"


FLIP_ME = to_bob(b"flip me")
FLIP_WIRE = FLIP_ME.SerializeToString(deterministic=True)


@settings(max_examples=400, deadline=None)
@given(bit=st.integers(0, len(FLIP_WIRE) * 8 - 1))
async def test_any_bit_flip_is_rejected(bit: int) -> None:
    wire = bytearray(FLIP_WIRE)
    wire[bit // 8] ^= 1 << (bit % 8)
    sent_at = FLIP_ME.header.timestamp.ToNanoseconds() / 1e9
    with pytest.raises(EnvelopeRejected):
        await bob_opener(clock=sent_at).open_bytes(bytes(wire))


async def test_every_single_bit_flip_of_one_envelope_is_rejected() -> None:
    sent_at = FLIP_ME.header.timestamp.ToNanoseconds() / 1e9
    accepted = []
    for bit in range(len(FLIP_WIRE) * 8):
        wire = bytearray(FLIP_WIRE)
        wire[bit // 8] ^= 1 << (bit % 8)
        try:
            await bob_opener(clock=sent_at).open_bytes(bytes(wire))
        except EnvelopeRejected:
            continue
        accepted.append(bit)
    assert accepted == []
    assert (await bob_opener(clock=sent_at).open_bytes(FLIP_WIRE)).plaintext == b"flip me"


@settings(max_examples=100, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    content_type=st.text(max_size=40),
    ttl=st.one_of(st.just(0.0), st.floats(60, 3600)),
)
async def test_seal_open_round_trip(payload: bytes, content_type: str, ttl: float) -> None:
    message = to_bob(payload, content_type=content_type, ttl_s=ttl)
    opened = await bob_opener().open_bytes(message.SerializeToString())
    assert opened.plaintext == payload
    assert opened.header.content_type == content_type


def _version(message: message_pb2.SecureMessage, version: int) -> message_pb2.SecureMessage:
    message.header.envelope_version = version
    return _resign(message)


def _sender(message: message_pb2.SecureMessage, sender: str) -> message_pb2.SecureMessage:
    message.header.sender = sender
    return message


def _recipient(message: message_pb2.SecureMessage, recipient: str) -> message_pb2.SecureMessage:
    message.header.recipient = recipient
    return _resign(message)


def _key_id(message: message_pb2.SecureMessage, key_id: str) -> message_pb2.SecureMessage:
    message.header.key_id = key_id
    return _resign(message)


def _flip_ciphertext(message: message_pb2.SecureMessage) -> message_pb2.SecureMessage:
    message.ciphertext = bytes([message.ciphertext[0] ^ 1]) + message.ciphertext[1:]
    return message


def _tag(message: message_pb2.SecureMessage) -> message_pb2.SecureMessage:
    """A ciphertext that Alice signed but that does not authenticate (e.g. a buggy sender)."""
    message.ciphertext = message.ciphertext[:-1] + bytes([message.ciphertext[-1] ^ 1])
    return _resign(message)
