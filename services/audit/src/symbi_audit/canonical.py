"""What is hashed and signed: the canonical bytes of events and checkpoints (format v1).

**Leaf.** Every field of an ``AuditEvent`` except ``chain_hash``, ``signature`` and
``key_id`` goes into the leaf, as JSON with sorted keys, no whitespace and UTF-8
text::

    {"agent_id":..,"correlation_id":..,"data_labels":[..],"details":{..},"event_id":..,
     "event_type":..,"outcome":<int>,"sequence":<int>,"source":..,"tenant":..,
     "trace_id":..,"ts_nanos":<int>,"ts_seconds":<int>,"v":1}

Numbers in ``details`` (protobuf ``Struct`` numbers are doubles) are written as
integers when integral and below 2^53, otherwise in Python's shortest round-trip
form; NaN and infinities are refused before they reach the log.

**Hashes** (RFC 9162 §2.1): ``leaf_hash = SHA-256(0x00 || leaf)``, interior nodes
``SHA-256(0x01 || left || right)``. The hash chain links each event to the one
before: ``chain_hash[n] = SHA-256(chain_hash[n-1] || leaf_hash[n])`` with
``chain_hash[-1]`` 32 zero bytes.

**Signatures** (Ed25519) are domain-separated, so no signature can be replayed as
another kind: an event signature is over ``b"symbi-audit-event/v1\\0" || chain_hash``;
a checkpoint signature over its text body::

    symbi-audit-checkpoint/v1
    log <log_id>
    size <tree_size>
    root <hex root_hash>
    time <seconds>.<nanos, 9 digits>
    chain <hex last_chain_hash>
    key <key_id>
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from google.protobuf.struct_pb2 import ListValue, Struct, Value

from symbi_proto.v1 import audit_pb2

FORMAT_VERSION = 1
GENESIS_CHAIN = bytes(32)
EVENT_SIGNATURE_CONTEXT = b"symbi-audit-event/v1\x00"
CHECKPOINT_HEADER = "symbi-audit-checkpoint/v1"
_MAX_SAFE_INT = 2**53


class CanonicalError(ValueError):
    """An event that has no canonical form (a non-finite number, say)."""


def struct_to_python(struct: Struct) -> dict[str, Any]:
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise CanonicalError(f"{number} has no canonical form")
        return int(number) if number.is_integer() and abs(number) < _MAX_SAFE_INT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_python(value.struct_value)
    if kind == "list_value":
        return _list(value.list_value)
    return None  # null_value, or unset


def check_details(struct: Struct) -> None:
    """Raise ``CanonicalError`` if ``struct`` holds a number with no canonical form (cheaper than encoding)."""
    for value in struct.fields.values():
        _check(value)


def _check(value: Value) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise CanonicalError(f"{value.number_value} has no canonical form")
    if kind == "struct_value":
        check_details(value.struct_value)
    elif kind == "list_value":
        for item in value.list_value.values:
            _check(item)


def _list(items: ListValue) -> list[Any]:
    return [_value(item) for item in items.values]


def leaf_bytes(event: audit_pb2.AuditEvent) -> bytes:
    """The canonical leaf of ``event`` (its sequence must already be assigned)."""
    doc = {
        "agent_id": event.agent_id,
        "correlation_id": event.correlation_id,
        "data_labels": list(event.data_labels),
        "details": struct_to_python(event.details),
        "event_id": event.event_id,
        "event_type": event.event_type,
        "outcome": int(event.outcome),
        "sequence": event.sequence,
        "source": event.source,
        "tenant": event.tenant,
        "trace_id": event.trace_id,
        "ts_nanos": event.timestamp.nanos,
        "ts_seconds": event.timestamp.seconds,
        "v": FORMAT_VERSION,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def leaf_hash(event: audit_pb2.AuditEvent) -> bytes:
    return hashlib.sha256(b"\x00" + leaf_bytes(event)).digest()


def chain(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(previous + leaf).digest()


def event_signing_input(chain_hash: bytes) -> bytes:
    return EVENT_SIGNATURE_CONTEXT + chain_hash


def checkpoint_body(checkpoint: audit_pb2.Checkpoint) -> bytes:
    lines = [
        CHECKPOINT_HEADER,
        f"log {checkpoint.log_id}",
        f"size {checkpoint.tree_size}",
        f"root {checkpoint.root_hash.hex()}",
        f"time {checkpoint.timestamp.seconds}.{checkpoint.timestamp.nanos:09d}",
        f"chain {checkpoint.last_chain_hash.hex()}",
        f"key {checkpoint.key_id}",
    ]
    return ("\n".join(lines) + "\n").encode()
