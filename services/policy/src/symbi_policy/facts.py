"""What a policy can see of a request: attribute paths and their accessors.

A condition names attributes by dotted paths under five roots:

=============  ===============================================================
``subject``    ``id``, ``kind`` (agent/user/service), ``tenant``, ``capabilities``,
               ``roles``, and any key of ``Subject.attributes``
``resource``   ``type``, ``id``, ``tenant``, ``owner``, ``labels``, ``sensitivity``
               (public < internal < confidential < restricted), ``destination``
               (the ``destination`` attribute, else ``<type>:<id>``), and any key
               of ``Resource.attributes``
``action``     ``type`` (the enforcement point, e.g. ``tool_invoke``), ``operation``,
               and any key of ``Action.attributes``
``context``    ``correlation_id`` and any key of ``PolicyContext.attributes``
``time``       ``hour``, ``minute``, ``weekday`` (mon..sun), ``date`` (YYYY-MM-DD),
               ``unix`` -- all UTC, from ``PolicyContext.time`` or the service clock
=============  ===============================================================

A path compiles once into an accessor over ``Facts`` (the request plus a lazily read
clock). An empty string field, an unset enum or an absent attribute is *missing*:
reading it raises ``MissingAttribute``, which the engine turns into a deny (fail
closed); ``has(path)`` tests for presence without failing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symbi_common import policy_client
from symbi_common.attributes import from_value
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import policy_pb2


class EvalError(Exception):
    """A condition could not be evaluated; the engine denies with this as the reason."""


class MissingAttribute(EvalError):
    def __init__(self, path: str) -> None:
        super().__init__(f"attribute {path} is missing")
        self.path = path


class PathError(ValueError):
    """A path that names nothing a policy can see (raised at compile time)."""


ACTION_NAMES: dict[int, str] = {value: name for name, value in policy_client.ACTION_TYPES.items()}
ACTIONS_BY_NAME: dict[str, int] = dict(policy_client.ACTION_TYPES)
SUBJECT_KINDS: dict[int, str] = {value: name for name, value in policy_client.SUBJECT_KINDS.items()}
SENSITIVITY_NAMES: dict[int, str] = {value: name for name, value in policy_client.SENSITIVITIES.items()}
SENSITIVITY_LEVELS: dict[str, int] = {name: int(value) for name, value in policy_client.SENSITIVITIES.items()}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Static types of values, used to reject nonsense at compile time.
STR, NUM, BOOL, LIST, TIME, ANY, SENSITIVITY = "string", "number", "bool", "list", "time", "any", "sensitivity"


class Facts:
    """One request as conditions see it: its fields read once into plain attributes.

    Reading a protobuf field costs far more than reading a Python attribute, and a
    request is examined by many rules, so every scalar is copied here up front;
    repeated fields and attribute maps stay as (cheap) references to the message.
    """

    __slots__ = (
        "_now", "_time", "action_attrs", "action_type", "capabilities", "context_attrs", "correlation_id",
        "labels", "operation", "request", "resource_attrs", "resource_id", "resource_owner", "resource_tenant",
        "resource_type", "roles", "sensitivity", "subject_attrs", "subject_id", "subject_kind", "subject_tenant",
        "trace",
    )  # fmt: skip

    def __init__(
        self,
        request: policy_pb2.EvaluateRequest,
        now: dt.datetime | None = None,
        trace: list[str] | None = None,
    ) -> None:
        context = request.context
        subject, resource, action = context.subject, context.resource, request.action
        self.request = request
        self.subject_kind = subject.kind
        self.subject_id = subject.id
        self.subject_tenant = subject.tenant
        self.capabilities = subject.capabilities
        self.roles = subject.roles
        self.subject_attrs = subject.attributes
        self.resource_type = resource.type
        self.resource_id = resource.id
        self.resource_tenant = resource.tenant
        self.resource_owner = resource.owner
        self.labels = resource.labels
        self.sensitivity = resource.sensitivity
        self.resource_attrs = resource.attributes
        self.action_type = action.type
        self.operation = action.operation
        self.action_attrs = action.attributes
        self.context_attrs = context.attributes
        self.correlation_id = context.correlation_id
        self.trace = trace
        self._now = now
        self._time: dt.datetime | None = None

    @property
    def time(self) -> dt.datetime:
        if self._time is None:
            context = self.request.context
            if context.HasField("time"):
                self._time = context.time.ToDatetime(tzinfo=dt.UTC)
            else:
                self._time = self._now or dt.datetime.now(dt.UTC)
        return self._time


Getter = Callable[[Facts], Any]


@dataclass(frozen=True, slots=True)
class Accessor:
    path: str
    get: Getter
    type: str
    uses_time: bool = False


def _present(path: str, get: Getter) -> Getter:
    def read(facts: Facts) -> Any:
        value = get(facts)
        if not value:
            raise MissingAttribute(path)
        return value

    return read


def _attribute(path: str, attributes: Callable[[Facts], Any], name: str) -> Getter:
    def read(facts: Facts) -> Any:
        values = attributes(facts)
        if name not in values:  # never index a protobuf map blindly: that inserts the key
            raise MissingAttribute(path)
        try:
            return from_value(values[name])
        except InvalidArgumentError:
            raise MissingAttribute(path) from None

    return read


def _destination(facts: Facts) -> str:
    attrs = facts.resource_attrs
    if "destination" in attrs:
        value = attrs["destination"]
        if value.WhichOneof("kind") != "string_value" or not value.string_value:
            raise EvalError("resource.destination must be a non-empty string")
        return value.string_value
    if not facts.resource_type or not facts.resource_id:
        raise MissingAttribute("resource.destination")
    return f"{facts.resource_type}:{facts.resource_id}"


_FIXED: dict[str, dict[str, tuple[str, Getter, bool]]] = {
    # name -> (type, getter, may be missing)
    "subject": {
        "id": (STR, lambda f: f.subject_id, True),
        "tenant": (STR, lambda f: f.subject_tenant, True),
        "kind": (STR, lambda f: SUBJECT_KINDS.get(f.subject_kind, ""), True),
        "capabilities": (LIST, lambda f: f.capabilities, False),
        "roles": (LIST, lambda f: f.roles, False),
    },
    "resource": {
        "type": (STR, lambda f: f.resource_type, True),
        "id": (STR, lambda f: f.resource_id, True),
        "tenant": (STR, lambda f: f.resource_tenant, True),
        "owner": (STR, lambda f: f.resource_owner, True),
        "labels": (LIST, lambda f: f.labels, False),
        "sensitivity": (SENSITIVITY, lambda f: SENSITIVITY_NAMES.get(f.sensitivity, ""), True),
        "destination": (STR, _destination, False),
    },
    "action": {
        "type": (STR, lambda f: ACTION_NAMES.get(f.action_type, ""), True),
        "operation": (STR, lambda f: f.operation, True),
    },
    "context": {
        "correlation_id": (STR, lambda f: f.correlation_id, True),
    },
    "time": {
        "hour": (NUM, lambda f: f.time.hour, False),
        "minute": (NUM, lambda f: f.time.minute, False),
        "weekday": (STR, lambda f: WEEKDAYS[f.time.weekday()], False),
        "date": (STR, lambda f: f.time.date().isoformat(), False),
        "unix": (NUM, lambda f: f.time.timestamp(), False),
    },
}
_ATTRIBUTE_MAPS: dict[str, Callable[[Facts], Any]] = {
    "subject": lambda f: f.subject_attrs,
    "resource": lambda f: f.resource_attrs,
    "action": lambda f: f.action_attrs,
    "context": lambda f: f.context_attrs,
}
ROOTS = tuple(_FIXED)


def accessor(parts: tuple[str, ...]) -> Accessor:
    """Compile a dotted path into an accessor; ``PathError`` if it names nothing."""
    path = ".".join(parts)
    if len(parts) != 2:
        raise PathError(f"{path!r}: a path is <root>.<name> with root one of {', '.join(ROOTS)}")
    root, name = parts
    if root not in _FIXED:
        raise PathError(f"{path!r}: unknown root {root!r} (one of {', '.join(ROOTS)})")
    fixed = _FIXED[root].get(name)
    if fixed is not None:
        kind, get, may_be_missing = fixed
        return Accessor(path, _present(path, get) if may_be_missing else get, kind, uses_time=root == "time")
    if root == "time":
        raise PathError(f"{path!r}: time has {', '.join(_FIXED['time'])}")
    return Accessor(path, _attribute(path, _ATTRIBUTE_MAPS[root], name), ANY)


def fixed_names(root: str) -> tuple[str, ...]:
    return tuple(_FIXED[root])
