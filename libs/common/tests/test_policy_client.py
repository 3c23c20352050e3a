"""Building policy requests from plain values, and the decision cache's rules."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi_common import attributes
from symbi_common.errors import InvalidArgumentError
from symbi_common.policy_client import DecisionCache, Principal, Target, request, request_from_dict
from symbi_proto.v1 import common_pb2, policy_pb2


def test_request_from_plain_values() -> None:
    req = request(
        "tool_invoke",
        Principal("agent", "a1", tenant="t", capabilities=["x"], attributes={"risk": 0.5}),
        Target("tool", "s/t", labels=["pii"], sensitivity="restricted", attributes={"bytes": 10}),
        operation="call",
        action_attributes={"network": True},
        context={"when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
        correlation_id="c",
    )
    assert req.action.type == policy_pb2.ACTION_TYPE_TOOL_INVOKE
    assert req.context.subject.kind == policy_pb2.SUBJECT_KIND_AGENT
    assert req.context.resource.sensitivity == common_pb2.DATA_SENSITIVITY_RESTRICTED
    assert attributes.to_dict(req.context.subject.attributes) == {"risk": 0.5}
    assert attributes.to_dict(req.action.attributes) == {"network": True}
    assert attributes.to_dict(req.context.attributes)["when"] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert request_from_dict(
        {
            "action": "tool_invoke",
            "operation": "call",
            "subject": {"kind": "agent", "id": "a1", "tenant": "t", "capabilities": ["x"], "attributes": {"risk": 0.5}},
            "resource": {"type": "tool", "id": "s/t", "labels": ["pii"], "sensitivity": "restricted",
                         "attributes": {"bytes": 10}},
            "action_attributes": {"network": True},
            "context": {"when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
            "correlation_id": "c",
        }
    ) == req  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"action": "teleport", "subject": {"kind": "agent", "id": "a"}}, "unknown enforcement point 'teleport'"),
        ({"action": "admin", "subject": {"kind": "robot", "id": "a"}}, "unknown subject kind 'robot'"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a"}, "resource": {"type": "x", "sensitivity": "hush"}},
         "unknown sensitivity 'hush'"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a", "shoe": 1}}, "bad subject or resource"),
        ({"action": "admin", "subjekt": {}}, "unknown request keys: subjekt"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a", "roles": [1]}},
         "subject.roles must be a list of strings"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a"}, "context": {"x": {"nested": 1}}},
         "x: dict is not an attribute value"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a"}, "context": {"x": 2**70}},
         "does not fit in 64 bits"),
        ({"action": "admin", "subject": {"kind": "user", "id": "a"}, "context": {"t": dt.datetime(2026, 1, 1)}},
         "needs a time zone"),
    ],
)  # fmt: skip
def test_bad_plain_requests_are_explained(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        request_from_dict(data)


@given(
    st.one_of(
        st.text(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.booleans(),
        st.lists(st.text(), max_size=5).map(tuple),
    )
)
def test_attribute_values_round_trip(value: object) -> None:
    assert attributes.from_value(attributes.to_value(value)) == value


def decision(version: int, ttl_s: float, outcome: str = "allow") -> policy_pb2.PolicyDecision:
    out = policy_pb2.PolicyDecision(policy_set_version=version, decision_id=f"d{version}-{ttl_s}")
    if outcome == "allow":
        out.allow.SetInParent()
    else:
        out.deny.kind = policy_pb2.DENY_KIND_DEFAULT
    out.cache_ttl.FromNanoseconds(int(ttl_s * 1e9))
    return out


REQ = request("admin", Principal("user", "u"), Target("policy", "p"), operation="register")


def test_the_cache_key_ignores_correlation_id_and_time_only() -> None:
    other = policy_pb2.EvaluateRequest()
    other.CopyFrom(REQ)
    other.context.correlation_id = "zzz"
    other.context.time.GetCurrentTime()
    assert DecisionCache.key(other) == DecisionCache.key(REQ)
    other.context.subject.id = "v"
    assert DecisionCache.key(other) != DecisionCache.key(REQ)


def test_the_cache_keeps_only_what_the_service_allowed() -> None:
    cache = DecisionCache(10)
    key = DecisionCache.key(REQ)
    cache.put(key, decision(1, 0))
    assert cache.get(key) is None  # ttl 0: not reusable
    cache.put(key, decision(1, 30, "deny"))
    assert cache.get(key) is not None  # a deny may be cached too, within its version


def test_a_newer_version_empties_the_cache() -> None:
    cache = DecisionCache(10)
    key = DecisionCache.key(REQ)
    cache.put(key, decision(1, 30, "deny"))
    cache.observe(2)
    assert cache.get(key) is None
    assert len(cache) == 0
    cache.put(key, decision(1, 30))  # a late answer from the old version is not kept
    assert cache.get(key) is None


def test_entries_expire_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DecisionCache(2)
    keys = [DecisionCache.key(request("admin", Principal("user", f"u{i}"), Target("p", "x"), operation="o"))
            for i in range(3)]  # fmt: skip
    for key in keys:
        cache.put(key, decision(1, 5))
    assert len(cache) == 2
    assert cache.get(keys[0]) is None
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 6)
    assert cache.get(keys[2]) is None
