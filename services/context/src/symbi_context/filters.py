"""``ContextFilter`` two ways: a Qdrant ``Filter``, and a test on a stored payload (Redis items).

Both read the payload written by ``items.to_payload``, and both mean the same: every
set field must match; ``labels_any`` needs one of the labels, ``labels_none`` none.
"""

from __future__ import annotations

from typing import Any, Literal

from qdrant_client import models

from symbi_common.errors import InvalidArgumentError
from symbi_context.items import check_labels
from symbi_proto.v1 import context_pb2

MAX_METADATA_CONDITIONS = 16


def check_filter(flt: context_pb2.ContextFilter) -> None:
    if len(flt.metadata_equals) > MAX_METADATA_CONDITIONS:
        raise InvalidArgumentError(f"filter: at most {MAX_METADATA_CONDITIONS} metadata_equals conditions")
    for key in flt.metadata_equals:
        if not key or "." in key or "[" in key:
            raise InvalidArgumentError(f"filter: metadata key {key!r} must be a plain top-level key")
    check_labels(list(flt.labels_any))
    check_labels(list(flt.labels_none))
    after, before = _seconds(flt, "created_after"), _seconds(flt, "created_before")
    if after and before and after >= before:
        raise InvalidArgumentError("filter: created_after is not before created_before")


def _seconds(flt: context_pb2.ContextFilter, field: Literal["created_after", "created_before"]) -> float:
    return getattr(flt, field).ToNanoseconds() / 1e9 if flt.HasField(field) else 0.0


def merge(base: context_pb2.ContextFilter, extra: context_pb2.ContextFilter) -> context_pb2.ContextFilter:
    """``base`` with the fields ``extra`` sets added (``base`` wins where both set one)."""
    out = context_pb2.ContextFilter()
    out.CopyFrom(extra)
    for key, value in base.metadata_equals.items():
        out.metadata_equals[key] = value
    out.labels_any.extend(label for label in base.labels_any if label not in out.labels_any)
    out.labels_none.extend(label for label in base.labels_none if label not in out.labels_none)
    if base.HasField("created_after"):
        out.created_after.CopyFrom(base.created_after)
    if base.HasField("created_before"):
        out.created_before.CopyFrom(base.created_before)
    for field in ("source", "document_id", "task_id"):
        if getattr(base, field):
            setattr(out, field, getattr(base, field))
    return out


def to_qdrant(flt: context_pb2.ContextFilter | None, **scope: str) -> models.Filter | None:
    """The Qdrant filter for ``flt`` plus equality on each ``scope`` field (e.g. ``agent_id=...``)."""
    must: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value)) for key, value in scope.items()
    ]
    must_not: list[models.Condition] = []
    if flt is not None:
        for key, value in sorted(flt.metadata_equals.items()):
            must.append(models.FieldCondition(key=f"meta.{key}", match=models.MatchValue(value=value)))
        if flt.labels_any:
            must.append(models.FieldCondition(key="labels", match=models.MatchAny(any=list(flt.labels_any))))
        if flt.labels_none:
            must_not.append(models.FieldCondition(key="labels", match=models.MatchAny(any=list(flt.labels_none))))
        after, before = _seconds(flt, "created_after"), _seconds(flt, "created_before")
        if after or before:
            must.append(
                models.FieldCondition(key="created_at", range=models.Range(gt=after or None, lt=before or None))
            )
        for field in ("source", "document_id", "task_id"):
            value = getattr(flt, field)
            if value:
                must.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def matches(flt: context_pb2.ContextFilter | None, payload: dict[str, Any]) -> bool:
    """Whether a stored payload passes ``flt`` (the same semantics as ``to_qdrant``)."""
    if flt is None:
        return True
    meta = payload.get("meta") or {}
    if any(meta.get(key) != value for key, value in flt.metadata_equals.items()):
        return False
    labels = set(payload.get("labels") or ())
    if flt.labels_any and not labels.intersection(flt.labels_any):
        return False
    if labels.intersection(flt.labels_none):
        return False
    created = float(payload.get("created_at") or 0.0)
    after, before = _seconds(flt, "created_after"), _seconds(flt, "created_before")
    if (after and not created > after) or (before and not created < before):
        return False
    return all(not getattr(flt, f) or payload.get(f) == getattr(flt, f) for f in ("source", "document_id", "task_id"))
