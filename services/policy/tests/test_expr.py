"""The condition language: what parses, what it means, and what it refuses."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi_common.policy_client import Principal, Target, request
from symbi_policy.expr import ExprError, compile_expression, compile_template
from symbi_policy.facts import EvalError, Facts, MissingAttribute

REQ = request(
    "tool_invoke",
    Principal("agent", "a1", tenant="t1", capabilities=["web_search", "read"], roles=["analyst"],
              attributes={"clearance": 3, "trusted": True}),
    Target("tool", "search/web", tenant="t1", labels=["pii"], sensitivity="confidential",
           attributes={"destination": "external:web", "bytes": 10}),
    operation="call",
    action_attributes={"memory_mb": 256},
    context={"risk_score": 0.3, "source": "api"},
)  # fmt: skip
MONDAY_NOON = dt.datetime(2026, 11, 30, 12, 30, tzinfo=dt.UTC)


def holds(text: str, req: object = REQ) -> bool:
    value = compile_expression(text).fn(Facts(req, MONDAY_NOON))  # type: ignore[arg-type]
    assert isinstance(value, bool)
    return value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('subject.capabilities contains "web_search"', True),
        ('subject.capabilities contains "shell"', False),
        ('subject.kind == "agent" and subject.tenant == resource.tenant', True),
        ('subject.roles contains_any ["admin", "analyst"]', True),
        ('subject.capabilities contains_all ["web_search", "read"]', True),
        ('subject.capabilities contains_all ["web_search", "write"]', False),
        ('resource.id matches "search/*"', True),
        ('resource.id matches "shell/*"', False),
        ("subject.id =~ '^a[0-9]+$'", True),
        ('action.operation in ["call", "read"]', True),
        ('action.operation not in ["call"]', False),
        ('action.type == "tool_invoke"', True),
        ("action.memory_mb <= 512 and action.memory_mb > 100", True),
        ("context.risk_score < 0.5", True),
        ("not (context.risk_score >= 0.5)", True),
        ('resource.sensitivity >= "internal"', True),
        ('resource.sensitivity < "confidential"', False),
        ('"restricted" > resource.sensitivity', True),
        ('resource.sensitivity in ["confidential", "restricted"]', True),
        ('resource.destination matches "external:*"', True),
        ("subject.clearance >= 3 and subject.trusted", True),
        ("has(context.risk_score) and not has(context.missing)", True),
        ('has(context.missing) or resource.labels contains "pii"', True),
        ("len(subject.capabilities) == 2 and len(resource.id) == 10", True),
        ('lower(subject.id) == "a1"', True),
        ('time.weekday == "mon" and time.hour == 12 and time.minute == 30', True),
        ('time.date == "2026-11-30"', True),
        ('resource.labels == ["pii"] and subject.capabilities == ["read", "web_search"]', True),
        ('context.source == "api" or context.source == "cli"', True),
        ("true and not false", True),
        ("-1 < 0", True),
    ],
)
def test_meaning(text: str, expected: bool) -> None:
    assert holds(text) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("context.risk_score == 'high'", "compares a number"),  # attribute of another type: an error, not false
        ("context.missing == 1", "attribute context.missing is missing"),
        ("context.risk_score", "is a number, not a boolean"),
        ("resource.owner == subject.id", "attribute resource.owner is missing"),  # empty string is missing
        ("context.source > 3", "compares a string"),
        ("len(context.risk_score) > 1", "len() of a number"),
        ("subject.trusted contains 'x'", "needs a list or string"),
    ],
)
def test_evaluation_errors_are_errors_not_false(text: str, message: str) -> None:
    with pytest.raises(EvalError, match=re.escape(message)):
        holds(text)


def test_a_missing_attribute_is_reported_by_path() -> None:
    with pytest.raises(MissingAttribute) as info:
        holds("subject.nonexistent > 1")
    assert info.value.path == "subject.nonexistent"


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("subject.roles > 3", "'>' cannot take a list on the left", 1),
        ('subject.capabilities == "x"', "compares a list with a string (use contains)", 1),
        ("agent.id == 'x'", "unknown root 'agent'", 1),
        ("subject.id.x == 1", "a path is <root>.<name>", 1),
        ("time.year == 2026", "time has hour, minute, weekday, date, unix", 1),
        ("subject.id == 'a' and", "condition ends too early", 19),
        ("subject.id == == 'a'", "unexpected '=='", 15),
        ("subject.id ? 'a'", "unexpected character '?'", 12),
        ('"just a string"', "yields a string, not a boolean", 1),
        ("resource.id matches subject.id", "needs a literal pattern", 1),
        ("resource.id =~ '('", "bad pattern", 1),
        ("resource.sensitivity > 'secret'", "unknown sensitivity 'secret'", 1),
        ("resource.sensitivity > subject.id", "compared with a level name", 1),
        ("has('x')", "has() takes an attribute path", 1),
        ("nosuch(subject.id)", "unknown function nosuch()", 1),
        ("len(subject.id, 2) > 1", "takes one argument", 1),
        ("action.operation in ['a', 1]", "a list holds values of one type", 21),
        ("x and 'a' == 'a'", "a path is <root>.<name>", 1),
    ],
)
def test_compile_errors_name_the_problem_and_column(text: str, message: str, column: int) -> None:
    with pytest.raises(ExprError, match=re.escape(message)) as info:
        compile_expression(text)
    assert info.value.column == column


def test_overlong_conditions_are_refused() -> None:
    with pytest.raises(ExprError, match="the limit is 4096"):
        compile_expression(" or ".join(["true"] * 2000))


def test_explain_mode_records_each_leaf() -> None:
    trace: list[str] = []
    expr = compile_expression(
        'subject.kind == "agent" and (has(context.nope) or context.risk_score < 0.5)', record=True
    )
    assert expr.fn(Facts(REQ, MONDAY_NOON, trace)) is True
    assert trace == [
        'subject.kind == "agent" -> true',
        "has(context.nope) -> false",
        "context.risk_score < 0.5 -> true",
    ]


def test_time_use_is_known_at_compile_time() -> None:
    assert compile_expression("time.hour > 8").uses_time
    assert not compile_expression("context.risk_score > 8").uses_time


def test_templates_fill_in_request_attributes() -> None:
    fill, uses_time = compile_template("agent:{subject.id}:tool:{resource.id}")
    assert fill(Facts(REQ)) == "agent:a1:tool:search/web"
    assert not uses_time
    with pytest.raises(ExprError, match="unknown root"):
        compile_template("{nope.x}")
    with pytest.raises(ExprError, match="is a list"):
        compile_template("{subject.capabilities}")
    with pytest.raises(ExprError, match="unbalanced braces"):
        compile_template("agent:{subject.id")


# Properties -------------------------------------------------------------------------

literals = st.sampled_from(["true", "false", "context.risk_score < 0.5", 'subject.id == "zz"', "has(context.x)"])


@given(literals, literals)
def test_boolean_algebra(a: str, b: str) -> None:
    va, vb = holds(a), holds(b)
    assert holds(f"({a}) and ({b})") is (va and vb)
    assert holds(f"({a}) or ({b})") is (va or vb)
    assert holds(f"not ({a})") is (not va)
    assert holds(f"not (({a}) and ({b}))") is holds(f"not ({a}) or not ({b})")


@given(st.text(alphabet="abc*?[]!.-/", max_size=8), st.text(alphabet="abc.-/", max_size=8))
def test_matches_is_fnmatch(pattern: str, value: str) -> None:
    import fnmatch

    req = request("tool_invoke", Principal("agent", "a1"), Target("tool", value or "x"), operation="call")
    escaped = pattern.replace("\\", "\\\\").replace('"', '\\"')
    assert holds(f'resource.id matches "{escaped}"', req) is fnmatch.fnmatchcase(value or "x", pattern)


@given(st.integers(-1000, 1000), st.integers(-1000, 1000))
def test_numeric_comparisons(a: int, b: int) -> None:
    req = request("tool_invoke", Principal("agent", "a1"), Target("tool", "t"), context={"n": a})
    assert holds(f"context.n < {b}", req) is (a < b)
    assert holds(f"context.n >= {b}", req) is (a >= b)
    assert holds(f"context.n == {b}", req) is (a == b)
