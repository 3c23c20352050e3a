"""The examples in docs/policy.md compile and mean what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from symbi_common.policy_client import Principal, Target, request
from symbi_policy.compiler import compile_sources
from symbi_policy.engine import PolicySet
from symbi_policy.expr import compile_expression
from symbi_proto.v1 import policy_pb2

DOC = (Path(__file__).resolve().parents[3] / "docs" / "policy.md").read_text()


def fenced(language: str) -> list[str]:
    """The bodies of the page's fenced blocks in ``language`` ("" for unlabelled ones)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", DOC, re.S | re.M)
    return [body for lang, body in blocks if lang == language]


YAML_BLOCKS = fenced("yaml")
PLAIN_BLOCKS = fenced("")


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.split("\n", 1)[0])
def test_every_yaml_example_compiles(block: str) -> None:
    assert compile_sources(block, "docs/policy.md")


def test_every_condition_example_compiles() -> None:
    (conditions,) = [b for b in PLAIN_BLOCKS if "subject.tenant == resource.tenant" in b]
    lines = [line for line in conditions.splitlines() if line.strip()]
    assert len(lines) == 5
    for line in lines:
        compile_expression(line)


def test_the_data_flow_example_does_what_it_says() -> None:
    (block,) = [b for b in YAML_BLOCKS if b.startswith("id: phi")]
    allow_all = "id: open\nrules:\n  - {name: all, effect: allow, actions: ['*']}\n"
    (phi,), (open_,) = compile_sources(block, "phi.yaml"), compile_sources(allow_all, "open.yaml")
    policies = PolicySet(1, {phi.id: phi, open_.id: open_})
    agent = Principal("agent", "a1")

    def send(tool: str, labels: list[str]) -> policy_pb2.PolicyDecision:
        return policies.evaluate(request("tool_invoke", agent, Target("tool", tool, labels=labels), operation="call"))

    assert send("web/post", ["phi"]).deny.reason == "PHI may only go to the EHR tools or other agents"
    assert send("ehr/write", ["phi"]).WhichOneof("outcome") == "allow"
    redacted = send("crm/update", ["pii"]).allow_with_conditions.conditions
    assert list(redacted[0].redact_fields.paths) == ["arguments.email"]
