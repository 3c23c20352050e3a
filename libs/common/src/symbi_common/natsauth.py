"""Zero trust on the broker: NATS decentralized (JWT) authentication and per-agent permissions.

The chain of trust is NATS's own: an **operator** key signs **accounts**; an account's
**signing key** signs **users**. The server is given only the operator JWT and the
account JWTs (``resolver: MEMORY``); it verifies every user JWT a client presents
against that chain and enforces the subject permissions inside it. Nothing about an
individual agent is configured on the server, so agents come and go without reloads.

- Accounts: ``SYS`` (the server's system account) and ``SYMBI`` (everything else,
  JetStream enabled). Services connect as SYMBI users with no restrictions.
- Each agent connects as its own SYMBI user (an NKey pair made for it) whose JWT allows
  only (see ``agent_permissions``):

  publish:   ``symbi.bus.out.<me>`` (envelopes to the router), ``symbi.bus.ctl.<me>.*``
             (directory, topic keys, rejection reports), and the JetStream API calls to
             pull from and acknowledge its own inbox consumer ``inbox_<me>``;
  subscribe: ``_INBOX_<me>.>`` (its replies), ``symbi.bus.request.<me>``,
             ``symbi.bus.reply.<me>`` and ``symbi.bus.topic.<t>`` for each permitted topic.

  It cannot publish as another agent, into any inbox, or to any other subject, and
  cannot read another agent's inbox, requests, replies or reply subjects.

JWTs are ``base64url(header).base64url(claims).base64url(ed25519 signature)`` with the
``ed25519-nkey`` algorithm, claims version 2, as nats-server expects.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from symbi_common import subjects
from symbi_common.errors import ConfigError, InvalidArgumentError, PermissionDeniedError

ALGORITHM = "ed25519-nkey"
CLAIMS_VERSION = 2
SYSTEM_ACCOUNT_NAME = "SYS"
SYMBI_ACCOUNT_NAME = "SYMBI"
_UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class NKey:
    """An NKey pair: ``seed`` (secret, ``S…``) and ``public`` (``O…``, ``A…`` or ``U…``)."""

    seed: bytes
    public: str

    @classmethod
    def generate(cls, prefix: int) -> NKey:
        return cls.from_seed(nkeys.encode_seed(os.urandom(32), prefix))

    @classmethod
    def from_seed(cls, seed: bytes) -> NKey:
        seed = seed.strip()
        try:
            pair = nkeys.from_seed(bytearray(seed))
        except nkeys.NkeysError as exc:
            raise InvalidArgumentError(f"not an NKey seed: {exc}") from None
        return cls(seed, pair.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: Mapping[str, Any], issuer: NKey) -> str:
    """Sign ``claims`` (``iss`` and ``jti`` are filled in) as a NATS JWT."""
    body = dict(claims)
    body["iss"] = issuer.public
    body.setdefault("iat", int(time.time()))
    body["jti"] = ""
    digest = hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": ALGORITHM}).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


def decode_jwt(token: str, *, trusted_issuers: Iterable[str] | None = None) -> dict[str, Any]:
    """The claims of a NATS JWT whose signature verifies against its ``iss`` (one of ``trusted_issuers``)."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(payload_b64))
        signature = _unb64(signature_b64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"not a JWT: {exc}") from None
    if header.get("alg") != ALGORITHM or not isinstance(claims, dict):
        raise InvalidArgumentError(f"not a NATS JWT (alg {header.get('alg')!r})")
    issuer = str(claims.get("iss", ""))
    if trusted_issuers is not None and issuer not in set(trusted_issuers):
        raise PermissionDeniedError(f"JWT issued by untrusted key {issuer}")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes(issuer)).verify(
            signature, f"{header_b64}.{payload_b64}".encode()
        )
    except (InvalidSignature, InvalidArgumentError, ValueError):
        raise PermissionDeniedError("JWT signature does not verify") from None
    return claims


def public_key_bytes(public: str) -> bytes:
    """The raw Ed25519 key inside an NKey public key (prefix byte, 32 bytes, CRC-16), checked."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except ValueError:
        raise InvalidArgumentError(f"{public!r} is not an NKey public key") from None
    if len(raw) != 35 or nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise InvalidArgumentError(f"{public!r} is not an NKey public key (length or checksum)")
    return raw[1:33]


def creds_text(user_jwt: str, seed: bytes) -> str:
    """A ``.creds`` file: the user JWT and its NKey seed, as ``nats-py``'s ``user_credentials`` reads it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )


def account_limits(*, jetstream: bool) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED, "imports": _UNLIMITED,
        "exports": _UNLIMITED, "wildcards": True, "conn": _UNLIMITED, "leaf": _UNLIMITED,
    }  # fmt: skip
    if jetstream:
        limits.update({
            "mem_storage": _UNLIMITED, "disk_storage": _UNLIMITED, "streams": _UNLIMITED, "consumer": _UNLIMITED,
            "max_ack_pending": _UNLIMITED, "mem_max_stream_bytes": _UNLIMITED, "disk_max_stream_bytes": _UNLIMITED,
        })  # fmt: skip
    return limits


def user_claims(
    user: str,
    name: str,
    account: str,
    *,
    publish_allow: Sequence[str] | None = None,
    subscribe_allow: Sequence[str] | None = None,
    expires_at: float = 0.0,
) -> dict[str, Any]:
    """Claims of a user of ``account``; ``None`` permissions mean unrestricted."""
    nats: dict[str, Any] = {
        "pub": {} if publish_allow is None else {"allow": list(publish_allow)},
        "sub": {} if subscribe_allow is None else {"allow": list(subscribe_allow)},
        "subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED,
        "issuer_account": account, "type": "user", "version": CLAIMS_VERSION,
    }  # fmt: skip
    claims: dict[str, Any] = {"sub": user, "name": name, "nats": nats}
    if expires_at:
        claims["exp"] = int(expires_at)
    return claims


def agent_inbox_prefix(agent_id: str) -> str:
    """The NATS reply-inbox prefix an agent's connection must use (``inbox_prefix``)."""
    return f"_INBOX_{subjects.token(agent_id)}"


def agent_permissions(agent_id: str, topics: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(publish allow, subscribe allow) of an agent's broker user."""
    consumer = subjects.inbox_consumer(agent_id)
    stream = subjects.INBOX_STREAM
    publish = [
        subjects.bus_out(agent_id),
        subjects.bus_ctl(agent_id, "*"),
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]
    subscribe = [
        f"{agent_inbox_prefix(agent_id)}.>",
        subjects.bus_request(agent_id),
        subjects.bus_reply(agent_id),
        *(subjects.bus_topic(topic) for topic in sorted(set(topics))),
    ]
    return publish, subscribe


@dataclass(frozen=True, slots=True)
class BrokerAuthority:
    """The operator, the two accounts and the SYMBI account's signing key.

    ``server_config`` is what nats-server needs (operator JWT, system account, account
    JWTs); ``service_creds`` makes credentials for a service; ``issuer`` is what the
    lifecycle service needs to issue agent credentials (the signing key only).
    """

    operator: NKey
    system_account: NKey
    account: NKey
    account_signing: NKey

    @classmethod
    def generate(cls) -> BrokerAuthority:
        return cls(
            NKey.generate(nkeys.PREFIX_BYTE_OPERATOR),
            NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT),
            NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT),
            NKey.generate(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    @classmethod
    def load_or_create(cls, directory: Path) -> BrokerAuthority:
        """Keys under ``directory`` (0700, seeds 0600), made on first use."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        names = ("operator", "system-account", "account", "account-signing")
        paths = [directory / f"{name}.nk" for name in names]
        if all(path.exists() for path in paths):
            return cls(*(NKey.from_seed(path.read_bytes()) for path in paths))
        made = cls.generate()
        for path, key in zip(
            paths, (made.operator, made.system_account, made.account, made.account_signing), strict=True
        ):
            _write_secret(path, key.seed + b"\n")
        return made

    def operator_jwt(self) -> str:
        claims = {
            "sub": self.operator.public,
            "name": "symbi",
            "nats": {"system_account": self.system_account.public, "type": "operator", "version": CLAIMS_VERSION},
        }
        return encode_jwt(claims, self.operator)

    def account_jwt(self, *, system: bool) -> str:
        key = self.system_account if system else self.account
        nats: dict[str, Any] = {"limits": account_limits(jetstream=not system), "type": "account", "version": 2}
        if not system:
            nats["signing_keys"] = [self.account_signing.public]
        name = SYSTEM_ACCOUNT_NAME if system else SYMBI_ACCOUNT_NAME
        return encode_jwt({"sub": key.public, "name": name, "nats": nats}, self.operator)

    def server_config(self) -> str:
        """The authorization part of a nats-server configuration file."""
        preload = {
            self.system_account.public: self.account_jwt(system=True),
            self.account.public: self.account_jwt(system=False),
        }
        lines = [
            f'operator: "{self.operator_jwt()}"',
            f'system_account: "{self.system_account.public}"',
            "resolver: MEMORY",
            "resolver_preload: {",
            *(f'  {account}: "{jwt}"' for account, jwt in preload.items()),
            "}",
        ]
        return "\n".join(lines) + "\n"

    @property
    def issuer(self) -> CredentialIssuer:
        return CredentialIssuer(self.account_signing, self.account.public)

    def service_creds(self, name: str) -> str:
        """Unrestricted credentials for a service (or an operator's CLI)."""
        return self.issuer.creds(name)


@dataclass(frozen=True, slots=True)
class IssuedUser:
    user: NKey
    jwt: str
    publish_allow: list[str]
    subscribe_allow: list[str]
    expires_at: float

    def creds(self) -> str:
        return creds_text(self.jwt, self.user.seed)


@dataclass(frozen=True, slots=True)
class CredentialIssuer:
    """Issues SYMBI-account users with the account's signing key."""

    signing_key: NKey
    account: str

    @classmethod
    def from_file(cls, path: Path) -> CredentialIssuer:
        """Read an issuer file: ``{"account": "A…", "signing_seed": "SA…"}`` (``to_file``)."""
        try:
            doc = json.loads(path.read_text())
            return cls(NKey.from_seed(str(doc["signing_seed"]).encode()), str(doc["account"]))
        except (OSError, ValueError, KeyError, TypeError, InvalidArgumentError) as exc:
            raise ConfigError(f"broker issuer file {path}: {exc}") from None

    def to_file(self, path: Path) -> Path:
        """Write the issuer file (owner-only): what the lifecycle service needs to issue agent users."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_secret(
            path, json.dumps({"account": self.account, "signing_seed": self.signing_key.seed.decode()}).encode()
        )
        return path

    def issue(
        self,
        name: str,
        *,
        publish_allow: Sequence[str] | None = None,
        subscribe_allow: Sequence[str] | None = None,
        ttl_s: float = 0.0,
    ) -> IssuedUser:
        user = NKey.generate(nkeys.PREFIX_BYTE_USER)
        expires = time.time() + ttl_s if ttl_s > 0 else 0.0
        claims = user_claims(
            user.public,
            name,
            self.account,
            publish_allow=publish_allow,
            subscribe_allow=subscribe_allow,
            expires_at=expires,
        )
        jwt = encode_jwt(claims, self.signing_key)
        return IssuedUser(user, jwt, list(publish_allow or []), list(subscribe_allow or []), expires)

    def creds(self, name: str) -> str:
        return self.issue(name).creds()

    def for_agent(self, agent_id: str, topics: Iterable[str] = (), *, ttl_s: float) -> IssuedUser:
        publish, subscribe = agent_permissions(agent_id, topics)
        return self.issue(f"agent:{agent_id}", publish_allow=publish, subscribe_allow=subscribe, ttl_s=ttl_s)


def _write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def write_creds(path: Path, creds: str) -> Path:
    """Write a ``.creds`` file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_secret(path, creds.encode())
    return path
