"""Property: any valid definition written back as DSL parses to the same model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbi_lifecycle.definitions import load, source_of
from symbi_lifecycle.definitions.model import CAPABILITIES, FILESYSTEM, PRIORITY, SENSITIVITY, TIERS, TRUST
from symbi_lifecycle.definitions.render import render
from symbi_proto.v1 import agent_pb2, sandbox_pb2

ROOT = Path(__file__).resolve().parents[3]
KEYWORDS = {"agent", "metadata", "capabilities", "policy", "with", "true", "false", "tenant"}
STATEMENTS = [
    (agent_pb2.POLICY_STATEMENT_KIND_ALLOW, 'tool_invoke(call) on "tool:search/*"'),
    (agent_pb2.POLICY_STATEMENT_KIND_ALLOW, "data_access(read, write) if resource.owner == subject.id"),
    (agent_pb2.POLICY_STATEMENT_KIND_DENY, 'data_access if resource.labels contains "pii" because "no pii"'),
    (agent_pb2.POLICY_STATEMENT_KIND_DENY, "message_send if resource.tenant != subject.tenant"),
    (agent_pb2.POLICY_STATEMENT_KIND_REQUIRE, "sandbox Tier2 for resource_allocate"),
    (agent_pb2.POLICY_STATEMENT_KIND_REQUIRE, "rate_limit 10 per 1m burst 2 for tool_invoke"),
    (agent_pb2.POLICY_STATEMENT_KIND_REQUIRE, 'approval "leads" within 10m for tool_invoke(file)'),
    (agent_pb2.POLICY_STATEMENT_KIND_REQUIRE, "limits(memory_mb = 256, execution_timeout = 30s) for resource_allocate"),
    (agent_pb2.POLICY_STATEMENT_KIND_AUDIT, 'all with inputs as "x"'),
    (agent_pb2.POLICY_STATEMENT_KIND_AUDIT, "tool_invoke|data_access with outputs"),
]

names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n not in KEYWORDS)
agent_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(lambda n: n not in KEYWORDS)
text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=12)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | text,
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=5,
)
types = st.sampled_from(["string", "int", "bool", "list<string>", "map<string, int>", "Document"])


@st.composite
def definitions(draw: st.DrawFn) -> agent_pb2.AgentDefinition:
    d = agent_pb2.AgentDefinition()
    meta = d.metadata
    meta.name = draw(agent_names)
    meta.version = draw(st.sampled_from(["", "1.0.0", "0.3.12-rc.1", "2.10.3+build.7"]))
    meta.author, meta.description = draw(text), draw(text)
    meta.labels.update(draw(st.dictionaries(words, text, max_size=3)))
    for name in draw(st.lists(names, unique=True, max_size=4)):
        param = d.parameters.add(name=name, type=draw(types), optional=draw(st.booleans()))
        if draw(st.booleans()):
            param.default_json = json.dumps(draw(json_values), sort_keys=True)
    d.return_type = draw(st.sampled_from(["", "Answer", "list<Report>"]))
    d.capabilities.extend(draw(st.lists(st.sampled_from(sorted(CAPABILITIES)), unique=True, max_size=5)))
    d.tenant = draw(st.sampled_from(["", "research", "t-1"]))
    for block in draw(st.lists(names, unique=True, max_size=3)):
        inline = d.policies.add(name=block)
        for kind, expression in draw(st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=3)):
            inline.statements.add(kind=kind, expression=expression)
    _options(draw, d.options)
    task = d.task
    task.image = draw(st.sampled_from(["symbi/base:bookworm", "registry.local/x/y:1.2"]))
    task.entrypoint.extend(draw(st.lists(text, max_size=2)))
    task.command.extend(draw(st.lists(text, max_size=3)))
    task.env.update(draw(st.dictionaries(words, text, max_size=3)))
    task.working_dir = draw(st.sampled_from(["", "/tmp", "/work dir"]))
    task.script = draw(st.sampled_from(["", "print('hi')\n", 'x = """\nq"\n', "a\\nb\n\tc"]) | text)
    return d


def _options(draw: st.DrawFn, options: agent_pb2.AgentOptions) -> None:
    def maybe(values: st.SearchStrategy[Any]) -> Any:
        return draw(st.none() | values)

    if (tier := maybe(st.sampled_from(list(TIERS.values())))) is not None:
        options.sandbox_tier = tier
    limits = options.limits
    if (ms := maybe(st.integers(1, 24 * 3600 * 1000))) is not None:
        limits.execution_timeout.FromMilliseconds(ms)
    limits.memory_mb = draw(st.sampled_from([0, 4, 512, 1024 * 1024]))
    limits.cpu_cores = draw(st.sampled_from([0.0, 0.01, 0.5, 1.0, 3.75, 256.0]))
    limits.disk_io_mbps = draw(st.sampled_from([0, 1, 250]))
    limits.network_io_mbps = draw(st.sampled_from([0, 100_000]))
    gvisor = options.sandbox_tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
    limits.max_pids = draw(st.sampled_from([0, 96, 4096] if gvisor else [0, 1, 64, 4096]))
    limits.max_output_bytes = draw(st.sampled_from([0, 1, 65_536, 10**9]))
    options.network_access = draw(st.booleans())
    options.data_sensitivity = draw(  # type: ignore[assignment]
        st.sampled_from([0, *SENSITIVITY.values()])
    )
    options.code_trust = draw(  # type: ignore[assignment]
        st.sampled_from([0, *TRUST.values()])
    )
    options.filesystem_access = draw(  # type: ignore[assignment]
        st.sampled_from([0, *FILESYSTEM.values()])
    )
    options.priority = draw(  # type: ignore[assignment]
        st.sampled_from([0, *PRIORITY.values()])
    )
    options.inputs.extend(draw(st.lists(text, max_size=3)))


def reparse(d: agent_pb2.AgentDefinition) -> agent_pb2.AgentDefinition:
    source = agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=render(d), name="r.symbi")
    built = load(source)
    assert built.ok, (source.text, [f"{i.location.line}:{i.location.column} {i.message}" for i in built.issues])
    out = built.definition
    out.ClearField("source")
    for inline in out.policies:
        inline.ClearField("location")
        for statement in inline.statements:
            statement.ClearField("location")
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions())
def test_rendered_definitions_parse_back_to_the_same_model(d: agent_pb2.AgentDefinition) -> None:
    assert reparse(d) == d


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "agents").iterdir()), ids=lambda p: p.name)
def test_every_example_round_trips(path: Path) -> None:
    d = load(source_of(path)).definition
    d.ClearField("source")
    for inline in d.policies:
        inline.ClearField("location")
        for statement in inline.statements:
            statement.ClearField("location")
    assert reparse(d) == d
