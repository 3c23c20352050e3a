"""The resource index prunes only rules that could not match: decisions are identical without it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_common.policy_client import Principal, Target, request
from symbi_policy import index
from symbi_policy.compiler import compile_sources
from symbi_policy.engine import PolicySet
from symbi_policy.index import RuleIndex, literal_prefix
from symbi_proto.v1 import policy_pb2

patterns = st.sampled_from(
    [
        "tool:a/*",
        "tool:a/b*",
        "tool:ab*",
        "tool:*",
        "tool",
        "*",
        "*:a*",
        "memory:a/*",
        "tool:a/?x",
        "tool:[ab]*",
        "tool:b",
    ]
)
rule = st.tuples(
    st.sampled_from(["allow", "deny"]),
    st.lists(patterns, max_size=3),
    st.sampled_from(["", "context.x > 1", "true", "false"]),
)
resources = st.tuples(st.sampled_from(["tool", "memory"]), st.sampled_from(["a/b", "a/bx", "ab", "b", "a/cx", "", "x"]))


def build(rules: list[tuple[str, list[str], str]]) -> PolicySet:
    lines = []
    for i, (effect, resources_, when) in enumerate(rules):
        res = f", resources: {resources_!r}" if resources_ else ""
        cond = f', when: "{when}"' if when else ""
        lines.append(f"  - {{name: r{i}, effect: {effect}, actions: [tool_invoke]{res}{cond}}}")
    (policy,) = compile_sources("id: gen\nrules:\n" + "\n".join(lines) + "\n", "gen.yaml")
    return PolicySet(1, {policy.id: policy})


@given(st.lists(rule, min_size=index.MIN_RULES, max_size=40), st.lists(resources, min_size=1, max_size=8))
@settings(max_examples=150, deadline=None)
def test_indexed_and_unindexed_sets_decide_alike(
    rules: list[tuple[str, list[str], str]], targets: list[tuple[str, str]]
) -> None:
    indexed = build(rules)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index, "MIN_RULES", 10**9)
        plain = build(rules)
    for rtype, rid in targets:
        req = request("tool_invoke", Principal("agent", "a"), Target(rtype, rid or "z"), operation="call")
        a, b = indexed.decide(req), plain.decide(req)
        assert (a.outcome, a.deny_kind, a.rule and a.rule.name, a.reason) == (
            b.outcome, b.deny_kind, b.rule and b.rule.name, b.reason
        )  # fmt: skip


def test_literal_prefixes() -> None:
    assert [literal_prefix(g) for g in ("a/b*", "a?", "[ab]c", "abc", "*")] == ["a/b", "a", "", "abc", ""]


def test_small_sets_skip_the_index() -> None:
    rules = build([("allow", ["tool:a/*"], "")] * 3).rules_for(policy_pb2.ACTION_TYPE_TOOL_INVOKE)
    assert not RuleIndex(rules).indexed
