"""A log's first signing key can come from the operator (a mounted Secret); a mismatch is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from symbi_audit.keys import KeyRing, key_id_of, raw_public
from symbi_audit.log import AuditLog, LogOptions
from symbi_audit.verify import verify_directory
from symbi_common.errors import ConfigError


def pem_key(path: Path) -> str:
    private = Ed25519PrivateKey.generate()
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key_id_of(raw_public(private.public_key()))


def test_a_given_key_seeds_a_new_log_and_must_match_an_existing_one(tmp_path: Path) -> None:
    given = tmp_path / "signing-key.pem"
    key_id = pem_key(given)
    log = AuditLog.open(tmp_path / "audit", LogOptions(signing_key_file=given))
    try:
        assert [key.key_id for key in log.keys.keys] == [key_id]
        public = log.keys.keys[0].public
    finally:
        log.close()
    assert verify_directory(tmp_path / "audit", {key_id: public}).ok  # genesis names and is signed by that key
    KeyRing.check_initial(tmp_path / "audit" / "keys", given)  # the same key again: fine

    other = tmp_path / "other.pem"
    other_id = pem_key(other)
    with pytest.raises(ConfigError, match=f"key {other_id}\\) is not one of this log's keys \\({key_id}\\)"):
        KeyRing.check_initial(tmp_path / "audit" / "keys", other)
    with pytest.raises(ConfigError, match="is not one of this log's keys"):
        AuditLog.open(tmp_path / "audit", LogOptions(signing_key_file=other))


@pytest.mark.parametrize(
    "content", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_an_unusable_key_file_is_a_configuration_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "signing-key.pem"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=r"audit signing key file .* is unreadable"):
        KeyRing.check_initial(tmp_path / "keys", bad)
    assert not (tmp_path / "keys").exists()  # nothing was created


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    wrong = tmp_path / "ec.pem"
    wrong.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="does not hold an Ed25519 private key"):
        KeyRing.check_initial(tmp_path / "keys", wrong)
