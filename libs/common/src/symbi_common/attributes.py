"""Typed attribute values (``symbi.v1.AttributeValue``) to and from Python values.

Python side: ``str``, ``int``, ``float``, ``bool``, a tuple of ``str`` (``StringList``)
and an aware ``datetime`` (``Timestamp``). Anything else is an ``InvalidArgumentError``
naming the attribute, so a caller's mistake never becomes a silent default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import policy_pb2

AttrValue = str | int | float | bool | tuple[str, ...] | dt.datetime


def to_value(value: Any, *, name: str = "attribute") -> policy_pb2.AttributeValue:
    """An ``AttributeValue`` holding ``value``."""
    out = policy_pb2.AttributeValue()
    if isinstance(value, bool):  # before int: bool is an int subclass
        out.bool_value = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidArgumentError(f"{name}: {value} does not fit in 64 bits")
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidArgumentError(f"{name}: a datetime needs a time zone")
        out.time_value.FromDatetime(value.astimezone(dt.UTC))
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if not all(isinstance(item, str) for item in items):
            raise InvalidArgumentError(f"{name}: only lists of strings are attribute values")
        out.string_list.values.extend(items)
    else:
        raise InvalidArgumentError(f"{name}: {type(value).__name__} is not an attribute value")
    return out


def from_value(value: policy_pb2.AttributeValue) -> AttrValue:
    """The Python value held by an ``AttributeValue``; an empty one is an error."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_list":
        return tuple(value.string_list.values)
    if kind == "time_value":
        return value.time_value.ToDatetime(tzinfo=dt.UTC)
    raise InvalidArgumentError("attribute value is empty")


def fill(target: MutableMapping[str, policy_pb2.AttributeValue], values: Mapping[str, Any] | None) -> None:
    """Copy a mapping of Python values into a protobuf attribute map."""
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"attribute names must be non-empty strings, not {key!r}")
        target[key].CopyFrom(to_value(value, name=key))


def to_dict(source: Mapping[str, policy_pb2.AttributeValue]) -> dict[str, AttrValue]:
    return {key: from_value(value) for key, value in source.items()}


def json_ready(value: AttrValue) -> str | int | float | bool | list[str]:
    """A JSON-encodable form (lists for tuples, RFC 3339 for times)."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def strings(values: Iterable[Any], *, name: str) -> list[str]:
    items = list(values)
    if not all(isinstance(item, str) for item in items):
        raise InvalidArgumentError(f"{name} must be a list of strings")
    return items
