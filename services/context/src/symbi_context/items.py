"""Context items: validation at the boundary, and their stored form (a JSON-like payload).

The payload is what Qdrant stores next to the vector (and Redis next to a short-term
item): every ``ContextItem`` field, times as Unix seconds (so ranges filter), and
``meta``: the top-level metadata values as strings, which is what
``ContextFilter.metadata_equals`` compares.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Struct

from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import common_pb2, context_pb2

K = context_pb2
KIND_NAMES: dict[int, str] = {
    K.MEMORY_KIND_SHORT_TERM: "short_term",
    K.MEMORY_KIND_LONG_TERM: "long_term",
    K.MEMORY_KIND_WORKING: "working",
    K.MEMORY_KIND_SHARED_KNOWLEDGE: "shared_knowledge",
}
VECTOR_KINDS = (K.MEMORY_KIND_LONG_TERM, K.MEMORY_KIND_WORKING, K.MEMORY_KIND_SHARED_KNOWLEDGE)
OWN_KINDS = (K.MEMORY_KIND_SHORT_TERM, K.MEMORY_KIND_LONG_TERM, K.MEMORY_KIND_WORKING)
SENSITIVITY_NAMES: dict[int, str] = {
    common_pb2.DATA_SENSITIVITY_PUBLIC: "public",
    common_pb2.DATA_SENSITIVITY_INTERNAL: "internal",
    common_pb2.DATA_SENSITIVITY_CONFIDENTIAL: "confidential",
    common_pb2.DATA_SENSITIVITY_RESTRICTED: "restricted",
}

MAX_CONTENT_BYTES = 64 * 1024
MAX_QUERY_CHARS = 4096
MAX_METADATA_BYTES = 16 * 1024
MAX_LABELS = 32
MAX_LIMIT = 200
DEFAULT_LIMIT = 10
_LABEL = re.compile(r"^[a-z0-9][a-z0-9_.:/-]{0,63}$")
_AGENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def kind_name(kind: int) -> str:
    try:
        return KIND_NAMES[kind]
    except KeyError:
        raise InvalidArgumentError(f"memory kind {kind} is not one of {', '.join(KIND_NAMES.values())}") from None


def check_agent_id(agent_id: str) -> str:
    if not _AGENT.fullmatch(agent_id):
        raise InvalidArgumentError(f"agent_id {agent_id!r} is missing or malformed")
    return agent_id


def check_query(query: str) -> str:
    text = query.strip()
    if not text:
        raise InvalidArgumentError("the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgumentError(f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS} are allowed")
    return text


def check_limit(limit: int) -> int:
    if limit > MAX_LIMIT:
        raise InvalidArgumentError(f"limit {limit} is over {MAX_LIMIT}")
    return limit or DEFAULT_LIMIT


def check_labels(labels: list[str]) -> list[str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgumentError(f"{len(labels)} labels; at most {MAX_LABELS}")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidArgumentError(f"label {label!r} must be lower case letters, digits and _ . : / -")
    return sorted(set(labels))


def check_context_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgumentError(f"context_id {value!r} is not a UUID") from None


@dataclass(frozen=True, slots=True)
class Owner:
    """Who stores an item: the agent and the tenant the lifecycle service knows it by."""

    agent_id: str
    tenant: str


def validate_item(item: context_pb2.ContextItem, owner: Owner) -> context_pb2.ContextItem:
    """A clean copy of ``item`` to store, or ``InvalidArgumentError`` naming the problem."""
    kind_name(item.kind)
    if item.agent_id and item.agent_id != owner.agent_id:
        raise InvalidArgumentError(f"item.agent_id {item.agent_id!r} is not the requesting agent {owner.agent_id!r}")
    if not item.content.strip():
        raise InvalidArgumentError("item.content is empty")
    if len(item.content.encode()) > MAX_CONTENT_BYTES:
        raise InvalidArgumentError(f"item.content is over {MAX_CONTENT_BYTES // 1024} KiB; ingest it as a document")
    if item.metadata.ByteSize() > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"item.metadata is over {MAX_METADATA_BYTES // 1024} KiB")
    if item.kind == K.MEMORY_KIND_WORKING and not item.task_id:
        raise InvalidArgumentError("working memory needs item.task_id (it is cleared when that task ends)")
    if item.sensitivity and item.sensitivity not in SENSITIVITY_NAMES:
        raise InvalidArgumentError(f"unknown sensitivity {item.sensitivity}")
    clean = context_pb2.ContextItem()
    clean.CopyFrom(item)
    clean.context_id = check_context_id(item.context_id) if item.context_id else str(uuid.uuid4())
    clean.agent_id, clean.tenant = owner.agent_id, owner.tenant
    clean.ClearField("labels")
    clean.labels.extend(check_labels(list(item.labels)))
    clean.score = 0.0
    return clean


def to_payload(item: context_pb2.ContextItem, *, created: float = 0.0, expires: float = 0.0) -> dict[str, Any]:
    now = time.time()
    metadata = MessageToDict(item.metadata)
    return {
        "agent_id": item.agent_id,
        "kind": int(item.kind),
        "content": item.content,
        "metadata": metadata,
        "meta": {k: _scalar(v) for k, v in metadata.items() if not isinstance(v, (dict, list))},
        "labels": list(item.labels),
        "sensitivity": int(item.sensitivity),
        "source": item.source,
        "document_id": item.document_id,
        "chunk_index": int(item.chunk_index),
        "task_id": item.task_id,
        "tenant": item.tenant,
        "created_at": created or now,
        "updated_at": now,
        "expires_at": expires,
    }


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def from_payload(context_id: str, payload: dict[str, Any], score: float = 0.0) -> context_pb2.ContextItem:
    item = context_pb2.ContextItem(
        context_id=context_id,
        agent_id=str(payload.get("agent_id", "")),
        kind=int(payload.get("kind", 0)),  # type: ignore[arg-type]
        content=str(payload.get("content", "")),
        labels=list(payload.get("labels") or []),
        sensitivity=int(payload.get("sensitivity", 0)),  # type: ignore[arg-type]
        source=str(payload.get("source", "")),
        document_id=str(payload.get("document_id", "")),
        chunk_index=int(payload.get("chunk_index", 0)),
        task_id=str(payload.get("task_id", "")),
        tenant=str(payload.get("tenant", "")),
        score=score,
    )
    ParseDict(payload.get("metadata") or {}, item.metadata)
    for field, key in (("created_at", "created_at"), ("updated_at", "updated_at"), ("expires_at", "expires_at")):
        seconds = float(payload.get(key) or 0.0)
        if seconds:
            getattr(item, field).FromNanoseconds(int(seconds * 1e9))
    return item


def metadata_struct(data: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(data)
    return struct
