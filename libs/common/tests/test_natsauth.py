"""NATS JWTs and agent permissions: signatures that verify, tampering that does not, files that round-trip."""

from __future__ import annotations

import stat
from pathlib import Path

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi_common import natsauth, subjects
from symbi_common.errors import ConfigError, InvalidArgumentError, PermissionDeniedError
from symbi_common.natsauth import BrokerAuthority, CredentialIssuer, NKey

AUTHORITY = BrokerAuthority.generate()


def test_user_jwt_verifies_against_its_issuer_and_carries_the_permissions() -> None:
    issued = AUTHORITY.issuer.for_agent("agent-1", ["news.daily"], ttl_s=60)
    claims = natsauth.decode_jwt(issued.jwt, trusted_issuers=[AUTHORITY.account_signing.public])
    assert claims["sub"] == issued.user.public
    assert claims["nats"]["issuer_account"] == AUTHORITY.account.public
    assert claims["nats"]["pub"]["allow"] == issued.publish_allow
    assert subjects.bus_topic("news.daily") in claims["nats"]["sub"]["allow"]
    assert claims["exp"] - claims["iat"] in (59, 60, 61)


def test_untrusted_issuer_and_tampered_claims_are_refused() -> None:
    jwt = AUTHORITY.issuer.for_agent("agent-1", ttl_s=60).jwt
    with pytest.raises(PermissionDeniedError, match="untrusted"):
        natsauth.decode_jwt(jwt, trusted_issuers=[AUTHORITY.operator.public])
    header, payload, signature = jwt.split(".")
    widened = natsauth._b64(natsauth._unb64(payload).replace(b'"pub":{"allow":[', b'"pub":{"allow":[">",'))
    with pytest.raises(PermissionDeniedError, match="does not verify"):
        natsauth.decode_jwt(f"{header}.{widened}.{signature}")
    with pytest.raises(InvalidArgumentError):
        natsauth.decode_jwt("not.a-jwt")


@given(st.binary(min_size=32, max_size=32))
def test_nkey_public_keys_round_trip_and_checksums_catch_typos(raw: bytes) -> None:
    key = NKey.from_seed(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER))
    assert len(natsauth.public_key_bytes(key.public)) == 32
    typo = key.public[:10] + ("A" if key.public[10] != "A" else "B") + key.public[11:]
    with pytest.raises(InvalidArgumentError):
        natsauth.public_key_bytes(typo)


def test_agent_permissions_name_only_its_own_subjects() -> None:
    publish, subscribe = natsauth.agent_permissions("a1", ["t.x"])
    for subject in publish + subscribe:
        assert "a1" in subject or subject == subjects.bus_topic("t.x")
    assert not any(s == ">" or s.endswith(".*.>") for s in publish)
    assert subjects.bus_inbox("a1") not in publish  # even its own inbox: only the router writes there


def test_authority_and_issuer_files_round_trip_owner_only(tmp_path: Path) -> None:
    made = BrokerAuthority.load_or_create(tmp_path / "auth")
    again = BrokerAuthority.load_or_create(tmp_path / "auth")
    assert again == made
    for path in (tmp_path / "auth").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    issuer_file = made.issuer.to_file(tmp_path / "issuer.json")
    assert CredentialIssuer.from_file(issuer_file) == made.issuer
    issuer_file.write_text("{}")
    with pytest.raises(ConfigError, match="issuer file"):
        CredentialIssuer.from_file(issuer_file)
    config = made.server_config()
    assert "resolver: MEMORY" in config
    assert made.account.public in config
    assert made.system_account.public in config
    assert made.account_signing.seed.decode() not in config  # the server never needs a seed
