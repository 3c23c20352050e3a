"""SchemaPin signatures of MCP tools: canonical form, what a signature covers, sign and verify.

SchemaPin signs a JSON document: canonical JSON (UTF-8, keys sorted recursively, no
insignificant whitespace) is hashed with SHA-256, those 32 bytes are signed with
ECDSA P-256 over SHA-256 (as the ``schemapin`` package does), and the DER signature
is encoded in Base64. Two documents are signed for a tool, each a
*coverage*:

``schema``
    Plain SchemaPin: the tool's ``inputSchema`` object as the server sends it. What
    ``schemapin.SchemaSigningWorkflow(...).sign_schema(tool.inputSchema)`` produces and
    ``verify_schema_offline`` accepts. It does **not** cover the name or description.

``symbi-descriptor-v1``
    The whole descriptor, as the object::

        {"symbi_descriptor": "v1", "name": ..., "title": ..., "description": ...,
         "input_schema": ..., "output_schema": ..., "annotations": ...}

    every key always present, ``null`` where the tool has no such field, values exactly
    as the server sends them (``inputSchema``, ``outputSchema``, ``annotations`` in their
    wire form). It is still a SchemaPin document: ``schemapin`` signs and verifies it
    unchanged, so the extension interoperates both ways.

Signatures travel in the tool's ``_meta`` (``{"schemapin": {"<coverage>": "<base64>"}}``)
or in an operator's signatures file (``{"tools": {"<tool>": {"<coverage>": "<base64>"}}}``).
Key fingerprints are SchemaPin's: ``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from symbi_common.errors import InvalidArgumentError

SCHEMA = "schema"
DESCRIPTOR_V1 = "symbi-descriptor-v1"
COVERAGES = (DESCRIPTOR_V1, SCHEMA)
META_KEY = "schemapin"
MAX_SIGNATURE_CHARS = 512


def canonical_json(document: Any) -> bytes:
    """SchemaPin's canonical form; values JSON cannot carry (NaN, sets, ...) are refused."""
    _check_finite(document)
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot canonicalise: {exc}") from None
    return text.encode("utf-8")


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError("cannot canonicalise: non-finite number")
    if isinstance(value, Mapping):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item)


def descriptor_document(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The ``symbi-descriptor-v1`` document of a tool given in its MCP wire form."""
    return {
        "symbi_descriptor": "v1",
        "name": tool.get("name"),
        "title": tool.get("title"),
        "description": tool.get("description"),
        "input_schema": tool.get("inputSchema"),
        "output_schema": tool.get("outputSchema"),
        "annotations": tool.get("annotations"),
    }


def covered_document(tool: Mapping[str, Any], coverage: str) -> Any:
    if coverage == DESCRIPTOR_V1:
        return descriptor_document(tool)
    if coverage == SCHEMA:
        return tool.get("inputSchema")
    raise InvalidArgumentError(f"unknown signature coverage {coverage!r} (known: {', '.join(COVERAGES)})")


def digest(document: Any) -> bytes:
    return hashlib.sha256(canonical_json(document)).digest()


def descriptor_sha256(tool: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical descriptor document: what audit records and pins remember."""
    return digest(descriptor_document(tool)).hex()


def sign(document: Any, private_key: ec.EllipticCurvePrivateKey) -> str:
    """A SchemaPin signature of ``document`` (Base64 DER ECDSA P-256 of its canonical SHA-256)."""
    signature = private_key.sign(digest(document), ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")


def verify(document: Any, signature_b64: str, public_key: ec.EllipticCurvePublicKey) -> bool:
    """True only for a well-formed signature that verifies; anything malformed is False."""
    if not signature_b64 or len(signature_b64) > MAX_SIGNATURE_CHARS:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, digest(document), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError, InvalidArgumentError):
        return False
    return True


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM; anything else is an ``InvalidArgumentError``."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidArgumentError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidArgumentError("SchemaPin keys must be ECDSA P-256")
    return key


def load_private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidArgumentError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidArgumentError("SchemaPin keys must be ECDSA P-256")
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def signatures_in(block: Any) -> dict[str, str]:
    """``{coverage: signature}`` from a ``{"<coverage>": "<base64>"}`` object; other entries are ignored."""
    if not isinstance(block, Mapping):
        return {}
    return {c: v for c in COVERAGES if isinstance(v := block.get(c), str) and v}


def signatures_from_meta(meta: Mapping[str, Any] | None) -> dict[str, str]:
    return signatures_in((meta or {}).get(META_KEY))


def sign_tool(tool: Mapping[str, Any], private_key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """Both signatures of a tool (what ``symbi tools sign`` publishes)."""
    return {coverage: sign(covered_document(tool, coverage), private_key) for coverage in COVERAGES}


def load_signatures_file(path: Path) -> dict[str, dict[str, str]]:
    """An operator's signatures file: ``{"tools": {"<tool>": {"<coverage>": "<base64>"}}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read signatures file {path}: {exc}") from None
    tools = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(tools, dict):
        raise InvalidArgumentError(f"{path}: a signatures file is an object with a `tools` object")
    return {str(name): signatures_in(block) for name, block in tools.items()}
