"""The log's Ed25519 signing keys: generated on first start, kept 0600, rotated on request.

Keys live in ``<storage>/keys/<key_id>.pem`` (PKCS#8, mode 0600, in a 0700
directory); ``keyring.json`` lists every key with its validity, oldest first. A key
id is the first 16 hex digits of SHA-256 over the raw public key. The log itself is
the record of which key is current: each rotation is an ``audit.key_rotated`` event
signed with the outgoing key that names the incoming one (``log.py``), so an
offline verifier that trusts the first key learns every later one from the log.

``public_keys_document`` is what an auditor takes away (``symbi audit keys``);
``load_trusted_keys`` reads it back, or a PEM public key, for verification.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from symbi_common.errors import ConfigError, InvalidArgumentError
from symbi_proto.v1 import audit_pb2

ALGORITHM = "ed25519"
KEYRING = "keyring.json"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass
class SigningKey:
    key_id: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None
    valid_from: dt.datetime
    valid_until: dt.datetime | None = None

    def message(self) -> audit_pb2.SigningKey:
        out = audit_pb2.SigningKey(key_id=self.key_id, algorithm=ALGORITHM, public_key=raw_public(self.public))
        out.valid_from.FromDatetime(self.valid_from)
        if self.valid_until is not None:
            out.valid_until.FromDatetime(self.valid_until)
        return out


class KeyRing:
    def __init__(self, directory: Path, keys: list[SigningKey]) -> None:
        self.directory = directory
        self.keys = keys

    @classmethod
    def open(cls, directory: Path, *, create: bool = True, initial: Path | None = None) -> KeyRing:
        """Load the keys, making the first one if there is none (and ``create``).

        ``initial``: a PEM Ed25519 private key (``[audit].signing_key_file``, e.g. a mounted
        Kubernetes Secret) that becomes the first key instead of a generated one; a keyring
        that already exists must hold it, so a log is never signed by a key the operator
        did not expect.
        """
        path = directory / KEYRING
        if not create and not path.exists():
            raise ConfigError(f"no audit keyring at {path}")
        given = read_private_key(initial) if initial is not None else None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        if not path.exists():
            ring = cls(directory, [])
            ring.keys.append(ring._store(given) if given is not None else ring._generate())
            ring.save()
            return ring
        try:
            entries = json.loads(path.read_text())["keys"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"audit keyring {path} is unreadable: {exc}") from None
        keys = [cls._load(directory, entry) for entry in entries]
        if not keys:
            raise ConfigError(f"audit keyring {path} lists no key")
        if given is not None and not any(key.key_id == key_id_of(raw_public(given.public_key())) for key in keys):
            raise ConfigError(
                f"the audit signing key {initial} (key {key_id_of(raw_public(given.public_key()))}) is not one of "
                f"this log's keys ({', '.join(key.key_id for key in keys)}); it only seeds a new log"
            )
        return cls(directory, keys)

    @classmethod
    def check_initial(cls, directory: Path, initial: Path) -> None:
        """Fail (ConfigError) unless ``initial`` is a readable Ed25519 key that an existing keyring holds."""
        read_private_key(initial)
        if (directory / KEYRING).exists():
            cls.open(directory, create=False, initial=initial)

    @staticmethod
    def _load(directory: Path, entry: dict[str, Any]) -> SigningKey:
        key_id = str(entry["key_id"])
        pem = directory / f"{key_id}.pem"
        try:
            private = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audit signing key {pem} is unreadable: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey) or key_id_of(raw_public(private.public_key())) != key_id:
            raise ConfigError(f"audit signing key {pem} is not the Ed25519 key {key_id}")
        if os.stat(pem).st_mode & 0o077:
            raise ConfigError(f"audit signing key {pem} is readable by others; chmod 600 it")
        until = entry.get("valid_until")
        return SigningKey(
            key_id,
            private.public_key(),
            private,
            dt.datetime.fromisoformat(entry["valid_from"]),
            dt.datetime.fromisoformat(until) if until else None,
        )

    def _generate(self) -> SigningKey:
        return self._store(Ed25519PrivateKey.generate())

    def _store(self, private: Ed25519PrivateKey) -> SigningKey:
        key_id = key_id_of(raw_public(private.public_key()))
        pem = self.directory / f"{key_id}.pem"
        data = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return SigningKey(key_id, private.public_key(), private, dt.datetime.now(dt.UTC))

    def save(self) -> None:
        doc = {
            "keys": [
                {
                    "key_id": key.key_id,
                    "public_key": base64.b64encode(raw_public(key.public)).decode(),
                    "valid_from": key.valid_from.isoformat(),
                    "valid_until": key.valid_until.isoformat() if key.valid_until else None,
                }
                for key in self.keys
            ]
        }
        tmp = self.directory / f"{KEYRING}.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.directory / KEYRING)

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    def new_key(self) -> SigningKey:
        """Generate (and store) the next key; it becomes current with ``activate``."""
        return self._generate()

    def activate(self, key: SigningKey) -> None:
        now = dt.datetime.now(dt.UTC)
        self.current.valid_until = now
        key.valid_from = now
        self.keys.append(key)
        self.save()

    def get(self, key_id: str) -> SigningKey | None:
        return next((key for key in self.keys if key.key_id == key_id), None)

    def sign(self, data: bytes) -> bytes:
        private = self.current.private
        assert private is not None
        return private.sign(data)


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file, or a ConfigError naming the file."""
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"audit signing key file {path} is unreadable: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"audit signing key file {path} does not hold an Ed25519 private key")
    return private


def public_keys_document(keys: list[audit_pb2.SigningKey], log_id: str) -> dict[str, Any]:
    return {
        "log_id": log_id,
        "keys": [
            {
                "key_id": key.key_id,
                "algorithm": key.algorithm,
                "public_key": base64.b64encode(key.public_key).decode(),
                "valid_from": key.valid_from.ToDatetime(tzinfo=dt.UTC).isoformat(),
            }
            for key in keys
        ],
    }


def load_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Keys an auditor trusts: a ``symbi audit keys`` JSON document or a PEM public key."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        try:
            entries = json.loads(data)["keys"]
            keys = [Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public_key"])) for entry in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgumentError(f"{path} is not a key document: {exc}") from None
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidArgumentError(f"{path} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidArgumentError(f"{path} is not an Ed25519 public key")
        keys = [key]
    return {key_id_of(raw_public(key)): key for key in keys}


def pem_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
