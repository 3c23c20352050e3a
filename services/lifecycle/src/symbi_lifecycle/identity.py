"""Agent identities: an Ed25519 key pair for signatures and an X25519 pair for key agreement.

The public halves go in the ``AgentRecord``; the private halves are stored apart
(``store.keys_key``) and never put in a record, a reply or an event.
"""

from __future__ import annotations

import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from symbi_proto.v1 import agent_pb2

_RAW = (Encoding.Raw, PublicFormat.Raw)


def key_id(signing_public: bytes) -> str:
    """The first 16 bytes of SHA-256 over the Ed25519 public key, in hex."""
    return hashlib.sha256(signing_public).hexdigest()[:32]


def new_identity() -> tuple[agent_pb2.AgentIdentity, tuple[bytes, bytes]]:
    """A fresh identity and its raw private keys (Ed25519 seed, X25519 scalar)."""
    signing = Ed25519PrivateKey.generate()
    agreement = X25519PrivateKey.generate()
    signing_public = signing.public_key().public_bytes(*_RAW)
    identity = agent_pb2.AgentIdentity(
        key_id=key_id(signing_public),
        signing_public_key=signing_public,
        agreement_public_key=agreement.public_key().public_bytes(*_RAW),
    )
    identity.created_at.seconds, identity.created_at.nanos = divmod(time.time_ns(), 1_000_000_000)
    private = (
        signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        agreement.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
    )
    return identity, private
