"""The secure message envelope: AES-256-GCM payloads, Ed25519 signatures, X25519 keys.

Construction (``envelope_version`` 1), for a ``SecureMessage`` from agent A:

- **Header bytes** ``H`` = deterministic protobuf serialization of ``MessageHeader``
  (it has no map fields, so the encoding is canonical for a given content).
- **Payload**: ``C = AES-256-GCM(K, nonce, plaintext, associated_data=H)``; the nonce
  is 12 fresh random bytes per message and is part of ``H``; the tag is appended to C.
- **Signature**: ``S = Ed25519_sign(A.signing_key, "symbi-envelope-v1\\0" || u32be(len(H)) || H || C)``.
  The length prefix makes the framing unambiguous.
- **Keys** ``K``:
  - *direct*: pairwise, from X25519 between the two agents' agreement keys, then
    ``HKDF-SHA256(ikm=shared, salt=SHA-256(pub_lo || pub_hi),
    info="symbi/v1/pair" || id_lo || 0 || id_hi || 0 || u32be(epoch))``
    where ``lo``/``hi`` order the two agents by id so both sides derive the same key.
    ``key_id = "pair:<epoch>:<first 16 hex of SHA-256 of the key>"``. Rotation: bump the
    epoch, or rotate either agent's agreement key (a new identity ``key_id``).
  - *topic*: a random 32-byte key per topic and epoch held in a ``TopicKeyring``
    (distributed to authorised subscribers by the bus, wrapped in direct envelopes);
    ``key_id = "topic:<topic>:<epoch>"``.

Senders put ``SecureMessage.SerializeToString(deterministic=True)`` on the wire, and
``EnvelopeOpener.open_bytes`` accepts only that canonical encoding. Receiving then
checks, in this order, and rejects with a distinct ``MessageRejectReason``: size
(OVERSIZED), shape and version (MALFORMED), sender known (UNKNOWN_SENDER), signature
(BAD_SIGNATURE), recipient (UNKNOWN_RECIPIENT), clock skew (STALE), expiry (EXPIRED),
replay of the message id or nonce (REPLAY), decryption (DECRYPT_FAILED). The signature
is checked before the replay cache is touched, so forged envelopes cannot poison it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from symbi_common.errors import PermissionDeniedError
from symbi_common.ids import new_id
from symbi_common.replay import ReplayCache
from symbi_proto.v1 import agent_pb2, message_pb2

ENVELOPE_VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
SIGNATURE_BYTES = 64
_DOMAIN = b"symbi-envelope-v1\x00"
DEFAULT_MAX_SKEW_S = 300.0
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

Reason: TypeAlias = message_pb2.MessageRejectReason.ValueType


class EnvelopeRejected(PermissionDeniedError):
    """An envelope was refused; ``reason`` is the MessageRejectReason."""

    def __init__(self, reason: Reason, detail: str, header: message_pb2.MessageHeader | None = None) -> None:
        name = message_pb2.MessageRejectReason.Name(reason)
        super().__init__(f"{name}: {detail}", metadata={"reason": name})
        self.reason = reason
        self.detail = detail
        self.header = header


@dataclass(frozen=True, slots=True)
class AgentKeys:
    """An agent's private keys: Ed25519 for signatures, X25519 for key agreement."""

    agent_id: str
    key_id: str
    signing: Ed25519PrivateKey
    agreement: X25519PrivateKey

    @classmethod
    def generate(cls, agent_id: str) -> AgentKeys:
        return cls(agent_id, new_id(), Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, agent_id: str, key_id: str, signing: bytes, agreement: bytes) -> AgentKeys:
        return cls(
            agent_id,
            key_id,
            Ed25519PrivateKey.from_private_bytes(signing),
            X25519PrivateKey.from_private_bytes(agreement),
        )

    def private_bytes(self) -> tuple[bytes, bytes]:
        """Raw 32-byte private keys (signing, agreement), for storage by their owner only."""
        return self.signing.private_bytes_raw(), self.agreement.private_bytes_raw()

    def identity(self) -> agent_pb2.AgentIdentity:
        identity = agent_pb2.AgentIdentity(
            key_id=self.key_id,
            signing_public_key=self.signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            agreement_public_key=self.agreement.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        )
        identity.created_at.GetCurrentTime()
        return identity


class Directory(Protocol):
    """Public identities of agents, by agent id (e.g. from the lifecycle service)."""

    def identity(self, agent_id: str) -> agent_pb2.AgentIdentity | None: ...


@dataclass(frozen=True, slots=True)
class SymmetricKey:
    key_id: str
    key: bytes


def pair_key(mine: AgentKeys, peer_id: str, peer: agent_pb2.AgentIdentity, epoch: int = 0) -> SymmetricKey:
    """The pairwise key of ``mine.agent_id`` and ``peer_id`` for ``epoch`` (same on both sides)."""
    my_public = mine.agreement.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _pair_key(
        mine.agreement.private_bytes_raw(), my_public, mine.agent_id, bytes(peer.agreement_public_key), peer_id, epoch
    )


@lru_cache(maxsize=4096)
def _pair_key(
    private: bytes, my_public: bytes, my_id: str, peer_public: bytes, peer_id: str, epoch: int
) -> SymmetricKey:
    if len(peer_public) != KEY_BYTES:
        raise ValueError("peer agreement key must be 32 bytes")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    (lo_id, lo_pub), (hi_id, hi_pub) = sorted([(my_id, my_public), (peer_id, peer_public)])
    info = b"symbi/v1/pair" + lo_id.encode() + b"\x00" + hi_id.encode() + b"\x00" + struct.pack(">I", epoch)
    salt = hashlib.sha256(lo_pub + hi_pub).digest()
    key = HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(shared)
    return SymmetricKey(f"pair:{epoch}:{hashlib.sha256(key).hexdigest()[:16]}", key)


def topic_key_id(topic: str, epoch: int) -> str:
    return f"topic:{topic}:{epoch}"


class TopicKeyring:
    """Topic keys by topic and epoch; ``rotate`` starts a new epoch, old ones still decrypt."""

    def __init__(self) -> None:
        self._keys: dict[str, SymmetricKey] = {}
        self._current: dict[str, str] = {}

    def current(self, topic: str) -> SymmetricKey:
        key_id = self._current.get(topic)
        return self._keys[key_id] if key_id else self.rotate(topic)

    def rotate(self, topic: str) -> SymmetricKey:
        epoch = int(self._current[topic].rsplit(":", 1)[1]) + 1 if topic in self._current else 0
        return self.add(topic, epoch, os.urandom(KEY_BYTES))

    def add(self, topic: str, epoch: int, key: bytes) -> SymmetricKey:
        if len(key) != KEY_BYTES:
            raise ValueError("a topic key is 32 bytes")
        entry = SymmetricKey(topic_key_id(topic, epoch), key)
        self._keys[entry.key_id] = entry
        current = self._current.get(topic)
        if current is None or int(current.rsplit(":", 1)[1]) < epoch:
            self._current[topic] = entry.key_id
        return entry

    def get(self, key_id: str) -> SymmetricKey | None:
        return self._keys.get(key_id)

    def get_current(self, topic: str) -> SymmetricKey | None:
        """The newest key of ``topic`` held here, or None (``current`` would make one)."""
        key_id = self._current.get(topic)
        return self._keys[key_id] if key_id else None


def signed_bytes(header_bytes: bytes, ciphertext: bytes) -> bytes:
    return _DOMAIN + struct.pack(">I", len(header_bytes)) + header_bytes + ciphertext


def seal(
    sender: AgentKeys,
    key: SymmetricKey,
    plaintext: bytes,
    *,
    kind: message_pb2.MessageKind.ValueType,
    recipient: str = "",
    topic: str = "",
    content_type: str = "application/octet-stream",
    correlation_id: str = "",
    ttl_s: float = 0.0,
    now: float | None = None,
) -> message_pb2.SecureMessage:
    """Encrypt and sign one message from ``sender`` with ``key``."""
    moment = time.time() if now is None else now
    header = message_pb2.MessageHeader(
        message_id=new_id(),
        sender=sender.agent_id,
        recipient=recipient,
        topic=topic,
        kind=kind,
        nonce=os.urandom(NONCE_BYTES),
        key_id=key.key_id,
        signing_key_id=sender.key_id,
        content_type=content_type,
        correlation_id=correlation_id,
        envelope_version=ENVELOPE_VERSION,
    )
    header.timestamp.FromNanoseconds(int(moment * 1e9))
    if ttl_s > 0:
        header.expires_at.FromNanoseconds(int((moment + ttl_s) * 1e9))
    header_bytes = header.SerializeToString(deterministic=True)
    ciphertext = AESGCM(key.key).encrypt(header.nonce, plaintext, header_bytes)
    signature = sender.signing.sign(signed_bytes(header_bytes, ciphertext))
    return message_pb2.SecureMessage(header=header, ciphertext=ciphertext, signature=signature)


def wire(message: message_pb2.SecureMessage) -> bytes:
    """The canonical bytes of an envelope: what senders put on the wire."""
    return message.SerializeToString(deterministic=True)


@dataclass(frozen=True, slots=True)
class Opened:
    header: message_pb2.MessageHeader
    plaintext: bytes


KeyLookup = Callable[[message_pb2.MessageHeader], SymmetricKey | None]


def parse_wire(data: bytes, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> message_pb2.SecureMessage:
    """Parse an envelope from the wire: size (OVERSIZED), protobuf and canonical encoding (MALFORMED)."""
    if len(data) > max_payload_bytes + 4096:
        raise EnvelopeRejected(message_pb2.MESSAGE_REJECT_REASON_OVERSIZED, f"envelope of {len(data)} bytes")
    message = message_pb2.SecureMessage()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise EnvelopeRejected(message_pb2.MESSAGE_REJECT_REASON_MALFORMED, "not a SecureMessage") from None
    if message.SerializeToString(deterministic=True) != data:
        # Only the canonical encoding is accepted: no two byte strings carry the same
        # envelope (e.g. an int32 varint with extra high bits parses to the same value).
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_MALFORMED, "not canonically encoded", message.header)
    return message


def check_shape(message: message_pb2.SecureMessage, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
    """Size (OVERSIZED), unknown fields, version, nonce and signature lengths, required fields (MALFORMED)."""
    header = message.header
    malformed = message_pb2.MESSAGE_REJECT_REASON_MALFORMED
    if len(message.ciphertext) > max_payload_bytes + 16:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_OVERSIZED, f"payload over {max_payload_bytes} bytes", header)
    if _has_unknown_fields(message):
        raise _reject(malformed, "envelope carries unknown fields", header)
    if header.envelope_version != ENVELOPE_VERSION:
        raise _reject(malformed, f"unsupported envelope_version {header.envelope_version}", header)
    if len(header.nonce) != NONCE_BYTES or len(message.signature) != SIGNATURE_BYTES:
        raise _reject(malformed, "nonce must be 12 bytes and signature 64 bytes", header)
    if not header.message_id or not header.sender or not header.HasField("timestamp") or len(message.ciphertext) < 16:
        raise _reject(malformed, "message_id, sender, timestamp and ciphertext are required", header)
    if header.kind not in _KINDS:
        raise _reject(malformed, f"unknown message kind {header.kind}", header)


_KINDS = frozenset(
    {
        message_pb2.MESSAGE_KIND_DIRECT,
        message_pb2.MESSAGE_KIND_TOPIC,
        message_pb2.MESSAGE_KIND_REQUEST,
        message_pb2.MESSAGE_KIND_REPLY,
    }
)


def verify_signature(message: message_pb2.SecureMessage, identity: agent_pb2.AgentIdentity | None) -> bytes:
    """Check the sender's Ed25519 signature (UNKNOWN_SENDER, BAD_SIGNATURE); returns the header bytes."""
    header = message.header
    if identity is None:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_UNKNOWN_SENDER, f"unknown sender {header.sender!r}", header)
    if identity.key_id != header.signing_key_id:
        raise _reject(
            message_pb2.MESSAGE_REJECT_REASON_BAD_SIGNATURE,
            f"signing key {header.signing_key_id!r} is not {header.sender}'s current key",
            header,
        )
    header_bytes = header.SerializeToString(deterministic=True)
    try:
        Ed25519PublicKey.from_public_bytes(bytes(identity.signing_public_key)).verify(
            message.signature, signed_bytes(header_bytes, message.ciphertext)
        )
    except (InvalidSignature, ValueError):
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_BAD_SIGNATURE, "signature does not verify", header) from None
    return header_bytes


def check_time(header: message_pb2.MessageHeader, now: float, max_skew_s: float) -> None:
    """Timestamp within ``max_skew_s`` of ``now`` (STALE) and not past ``expires_at`` (EXPIRED)."""
    sent = header.timestamp.ToNanoseconds() / 1e9
    if abs(now - sent) > max_skew_s:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_STALE, f"sent {now - sent:+.0f}s from now", header)
    if header.HasField("expires_at") and header.expires_at.ToNanoseconds() / 1e9 <= now:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_EXPIRED, "expired before delivery", header)


def decrypt(message: message_pb2.SecureMessage, key: SymmetricKey | None, header_bytes: bytes) -> bytes:
    """AES-256-GCM decryption with the header as associated data (DECRYPT_FAILED)."""
    header = message.header
    if key is None or key.key_id != header.key_id:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_DECRYPT_FAILED, f"no key {header.key_id!r}", header)
    try:
        return AESGCM(key.key).decrypt(header.nonce, message.ciphertext, header_bytes)
    except InvalidTag:
        raise _reject(message_pb2.MESSAGE_REJECT_REASON_DECRYPT_FAILED, "authentication tag mismatch", header) from None


class EnvelopeOpener:
    """Verifies and decrypts envelopes addressed to one agent (or its topics)."""

    def __init__(
        self,
        directory: Directory,
        replay: ReplayCache | None,
        keys: KeyLookup,
        *,
        recipient: str = "",
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.replay = replay
        self.keys = keys
        self.recipient = recipient
        self.max_skew_s = max_skew_s
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock

    async def open_bytes(self, data: bytes, *, now: float | None = None, replay: bool = True) -> Opened:
        return await self.open(parse_wire(data, self.max_payload_bytes), now=now, replay=replay)

    async def open(
        self, message: message_pb2.SecureMessage, *, now: float | None = None, replay: bool = True
    ) -> Opened:
        """All checks, then decryption.

        ``now``: the time to judge the timestamp against (default: the clock); a receiver
        of a durable message passes the time the broker stored it. ``replay=False`` leaves
        the replay check to the caller (durable inboxes dedup by message id themselves).
        """
        header = message.header
        check_shape(message, self.max_payload_bytes)
        header_bytes = verify_signature(message, self.directory.identity(header.sender))
        self._check_addressing(header)
        check_time(header, self.clock() if now is None else now, self.max_skew_s)
        if replay and self.replay is not None:
            window = 2 * self.max_skew_s
            nonce_seen = await self.replay.seen(f"nonce:{header.nonce.hex()}", window)
            if await self.replay.seen(f"msg:{header.message_id}", window) or nonce_seen:
                raise _reject(
                    message_pb2.MESSAGE_REJECT_REASON_REPLAY, f"message {header.message_id} seen before", header
                )
        return Opened(header, decrypt(message, self.keys(header), header_bytes))

    def _check_addressing(self, header: message_pb2.MessageHeader) -> None:
        if not self.recipient or header.kind == message_pb2.MESSAGE_KIND_TOPIC:
            return
        if header.recipient != self.recipient:
            raise _reject(
                message_pb2.MESSAGE_REJECT_REASON_UNKNOWN_RECIPIENT,
                f"addressed to {header.recipient!r}, not {self.recipient!r}",
                header,
            )


def _has_unknown_fields(message: message_pb2.SecureMessage) -> bool:
    from google.protobuf.unknown_fields import UnknownFieldSet

    return len(UnknownFieldSet(message)) > 0 or len(UnknownFieldSet(message.header)) > 0


def _reject(reason: Reason, detail: str, header: message_pb2.MessageHeader) -> EnvelopeRejected:
    return EnvelopeRejected(reason, detail, header)
