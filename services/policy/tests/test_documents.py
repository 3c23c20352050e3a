"""Policy documents: every problem is reported with file, line and column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from symbi_policy.compiler import compile_sources, compile_stored
from symbi_policy.document import DocumentError
from symbi_proto.v1 import policy_pb2

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))

GOOD = """\
id: tools
description: tool rules
rules:
  - name: allow-search
    effect: allow
    actions: [tool_invoke]
    resources: ["tool:search/*"]
    when: subject.capabilities contains "web_search"
"""


def problems(text: str, name: str = "p.yaml", fmt: str = "yaml") -> list[tuple[int, int, str]]:
    with pytest.raises(DocumentError) as info:
        compile_sources(text, name, fmt)
    for issue in info.value.issues:
        assert issue.location.file == name
    return [(i.location.line, i.location.column, i.message) for i in info.value.issues]


def test_a_good_document_compiles_into_a_versioned_policy() -> None:
    (policy,) = compile_sources(GOOD, "p.yaml", version=3, created_by="tester")
    assert policy.id == "tools"
    assert policy.version == 3
    assert list(policy.policy.rules) == ["allow-search"]
    assert list(policy.policy.types) == [policy_pb2.POLICY_TYPE_ACCESS_CONTROL]
    assert policy.policy.source.text == GOOD
    assert policy.policy.created_by == "tester"
    assert len(policy.policy.source_sha256) == 32


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_policy_compiles_without_warnings(path: Path) -> None:
    compiled = compile_sources(path.read_text(), str(path))
    assert compiled
    assert [w for c in compiled for w in c.warnings] == []


def test_examples_cover_the_four_policy_types() -> None:
    types = {t for path in EXAMPLES for c in compile_sources(path.read_text(), str(path)) for t in c.policy.types}
    assert types == {
        policy_pb2.POLICY_TYPE_ACCESS_CONTROL,
        policy_pb2.POLICY_TYPE_DATA_FLOW,
        policy_pb2.POLICY_TYPE_RESOURCE_USAGE,
        policy_pb2.POLICY_TYPE_AUDIT_REQUIREMENT,
    }


def test_yaml_syntax_errors_are_located() -> None:
    [(line, column, message)] = problems("id: x\nrules:\n  - name: a\n   effect: allow\n")
    assert (line, column) == (4, 4)
    assert message.startswith("YAML syntax")


def test_unknown_keys_are_errors_at_their_line() -> None:
    text = GOOD.replace("    effect: allow\n", "    effect: allow\n    efect: deny\n")
    assert problems(text) == [(6, 5, "rules.0.efect: unknown key")]


def test_bad_values_are_located() -> None:
    text = GOOD.replace("effect: allow", "effect: permit")
    [(line, column, message)] = problems(text)
    assert (line, column) == (5, 13)
    assert "rules.0.effect" in message


def test_a_bad_condition_points_inside_the_string() -> None:
    plain = GOOD.replace('when: subject.capabilities contains "web_search"', "when: subject.roles > 3")
    assert problems(plain)[0][:2] == (8, 11)
    quoted = GOOD.replace('when: subject.capabilities contains "web_search"', "when: 'subject.id == == 1'")
    [(line, column, message)] = problems(quoted)
    assert (line, column) == (8, 26)  # the quote is column 11, so the text starts at 12; == is its 15th column
    assert "unexpected '=='" in message


def test_several_problems_are_reported_together() -> None:
    text = """\
id: two
rules:
  - name: a
    effect: allow
    actions: [tool_invoke, teleport]
  - name: a
    effect: deny
    actions: [admin]
    require: {sandbox_tier: Tier2}
"""
    found = problems(text)
    messages = " | ".join(m for _, _, m in found)
    assert "unknown action 'teleport'" in messages
    assert "rule name 'a' is used twice" in messages
    assert "a deny rule attaches no conditions" in messages
    assert (5, 28) in [(line, col) for line, col, _ in found]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("effect: require\n    actions: ['*']", "effect require needs a require: block"),
        ("type: audit\n    effect: allow\n    actions: ['*']", "an audit rule is effect allow or require"),
        ("type: resource_usage\n    effect: require\n    actions: ['*']\n    require: {audit: {}}", "resource_usage"),
        ("type: data_flow\n    effect: deny\n    actions: ['*']", "names the data labels"),
        ("effect: deny\n    actions: ['*']\n    labels: [pii]", "belong to data_flow rules"),
        ("effect: allow\n    actions: ['*']\n    reason: because", "only deny rules give a reason"),
        ("effect: allow\n    actions: ['*']\n    resources: [':x']", "needs a type"),
        ("effect: allow\n    actions: []", "at least 1 item"),
        (
            "effect: require\n    actions: ['*']\n    require: {rate_limit: {key: '{x.y}', limit: 1, period: 1s}}",
            "unknown root",
        ),
        ("effect: require\n    actions: ['*']\n    require: {limits: {memory_mb: -1}}", "greater than 0"),
        ("effect: require\n    actions: ['*']\n    require: {max_bytes: 12 parsecs}", "is not a size"),
        ("effect: require\n    actions: ['*']\n    require: {human_approval: {approver_group: x, timeout: soon}}",
         "is not a duration"),
    ],
)  # fmt: skip
def test_rule_shapes_are_checked(rule: str, message: str) -> None:
    text = f"id: shapes\nrules:\n  - name: r\n    {rule}\n"
    assert message in " | ".join(m for _, _, m in problems(text))


def test_duplicate_keys_are_errors() -> None:
    text = GOOD.replace("    effect: allow\n", "    effect: allow\n    effect: deny\n")
    assert (6, 5, "duplicate key 'effect'") in problems(text)


def test_a_file_may_hold_several_policies_each_with_its_own_text() -> None:
    second = GOOD.replace("id: tools", "id: more")
    first, other = compile_sources(GOOD + "---\n" + second, "multi.yaml")
    assert (first.id, other.id) == ("tools", "more")
    assert first.policy.source.text == GOOD
    assert other.policy.source.text == second
    assert compile_stored(other.policy).rules[0].name == "allow-search"


def test_the_same_id_twice_in_one_file_is_an_error() -> None:
    assert "appears more than once" in problems(GOOD + "---\n" + GOOD)[0][2]


def test_json_documents_are_accepted() -> None:
    doc = {"id": "j", "rules": [{"name": "r", "effect": "allow", "actions": ["admin"], "when": "true"}]}
    (policy,) = compile_sources(json.dumps(doc, indent=2), "p.json", "json")
    assert policy.id == "j"
    assert problems('{"id": "j", "rules": [}', "p.json", "json")[0][2].startswith("YAML syntax")


def test_empty_and_non_mapping_documents_are_refused() -> None:
    assert problems("")[0][2] == "no policy document found"
    assert "a policy document is a mapping" in problems("- a\n- b\n")[0][2]
    assert "unknown format" in problems("id: x", fmt="xml")[0][2]


def test_broad_allows_warn() -> None:
    (policy,) = compile_sources("id: w\nrules:\n  - {name: all, effect: allow, actions: ['*']}\n", "w.yaml")
    assert [w.message for w in policy.warnings] == ["rule all: allows every request"]


def test_oversized_documents_are_refused() -> None:
    assert "exceeds 1024 KiB" in problems("# " + "x" * (1024 * 1024))[0][2]
