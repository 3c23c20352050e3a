"""The definitions shown in docs/agents.md are valid, and say what the page says they do."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from symbi_lifecycle.definitions import load, policy_for
from symbi_proto.v1 import agent_pb2

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "agents.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.S)


def test_every_dsl_example_on_the_page_is_valid() -> None:
    examples = blocks("symbi")
    assert examples
    for text in examples:
        built = load(agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name="doc"))
        assert built.ok, [i.message for i in built.issues]


def test_the_manifest_example_is_valid_and_the_generated_rule_is_as_shown() -> None:
    rule, manifest = blocks("yaml")
    built = load(agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_YAML, text=manifest, name="doc.yaml"))
    assert built.ok, [i.message for i in built.issues]
    dsl = load(agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=blocks("symbi")[0], name="d"))
    generated = policy_for(dsl, "<agent id>")
    assert generated is not None
    rules = yaml.safe_load(generated[1])["rules"]
    (shown,) = yaml.safe_load(rule)
    assert shown in rules
