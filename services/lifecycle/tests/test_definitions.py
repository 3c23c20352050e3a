"""Agent definitions: the DSL and manifests parse into one model; every problem has a place."""

from __future__ import annotations

from pathlib import Path

import pytest

from symbi_common.policy_client import Principal, Target, request
from symbi_lifecycle.definitions import FORMATS, Built, load, policy_for, source_of
from symbi_policy.compiler import compile_sources
from symbi_policy.engine import PolicySet
from symbi_proto.v1 import agent_pb2, common_pb2, policy_pb2, sandbox_pb2, task_pb2

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "agents").iterdir())
AGENT_ID = "0190aaaa-0000-7000-8000-000000000001"

MINIMAL = """
agent tiny() {
    with {
        command = ["true"]
    }
}
"""


def dsl(text: str, name: str = "agent.symbi") -> Built:
    return load(agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name=name))


def manifest(text: str, fmt: str) -> Built:
    formats = {"yaml": agent_pb2.DEFINITION_FORMAT_YAML, "toml": agent_pb2.DEFINITION_FORMAT_TOML}
    formats["json"] = agent_pb2.DEFINITION_FORMAT_JSON
    return load(agent_pb2.DefinitionSource(format=formats[fmt], text=text, name=f"agent.{fmt}"))


def problems(built: Built) -> list[tuple[str, int, int]]:
    return [(i.code, i.location.line, i.location.column) for i in built.issues]


def only_error(built: Built) -> common_pb2.ValidationIssue:
    assert not built.ok
    (problem,) = built.issues
    return problem


def model(built: Built) -> agent_pb2.AgentDefinition:
    """The definition without where it came from (what two formats must agree on)."""
    out = agent_pb2.AgentDefinition()
    out.CopyFrom(built.definition)
    out.ClearField("source")
    for inline in out.policies:
        inline.ClearField("location")
        for statement in inline.statements:
            statement.ClearField("location")
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_and_its_policies_compile(path: Path) -> None:
    built = load(source_of(path))
    assert built.ok, [f"{i.location.line}:{i.location.column} {i.message}" for i in built.issues]
    definition = built.definition
    assert definition.metadata.name == path.stem
    assert definition.metadata.version
    assert definition.task.image == "symbi/base:bookworm"
    assert definition.task.command
    assert definition.options.limits.execution_timeout.ToNanoseconds() > 0
    generated = policy_for(built, AGENT_ID)
    if definition.policies:
        assert generated is not None
        policy_id, text = generated
        (compiled,) = compile_sources(text, "inline.yaml")
        assert compiled.id == policy_id == f"agent-{AGENT_ID}"
    else:
        assert generated is None


def test_the_dsl_reads_every_part_of_a_definition() -> None:
    built = load(source_of(ROOT / "examples" / "agents" / "data_pipeline.symbi"))
    d = built.definition
    assert (d.metadata.name, d.metadata.version, d.metadata.author) == ("data_pipeline", "0.3.1", "data platform")
    assert [(p.name, p.type) for p in d.parameters] == [("dataset", "string"), ("transform", "string")]
    assert d.return_type == "Dataset"
    assert list(d.capabilities) == ["execute_code", "read_files", "write_files", "analyze_data"]
    assert d.tenant == "analytics"
    o = d.options
    assert o.sandbox_tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
    assert o.limits.execution_timeout.ToSeconds() == 300
    assert (o.limits.memory_mb, o.limits.cpu_cores, o.limits.max_pids) == (1024, 1.0, 128)
    assert o.limits.max_output_bytes == 4_000_000  # sizes are SI, as in policies; memory counts MiB
    assert not o.network_access
    assert o.data_sensitivity == common_pb2.DATA_SENSITIVITY_CONFIDENTIAL
    assert o.code_trust == sandbox_pb2.CODE_TRUST_UNTRUSTED
    assert o.filesystem_access == sandbox_pb2.FILESYSTEM_ACCESS_READ_WRITE
    assert o.priority == task_pb2.TASK_PRIORITY_LOW
    assert list(d.task.entrypoint) == ["python3"]
    assert dict(d.task.env) == {"PYTHONUNBUFFERED": "1"}
    assert d.task.working_dir == "/tmp"
    assert d.task.script.startswith("\nimport sys\n")
    (block,) = d.policies
    assert block.name == "containment"
    kinds = [s.kind for s in block.statements]
    assert kinds == [agent_pb2.POLICY_STATEMENT_KIND_REQUIRE] * 2 + [
        agent_pb2.POLICY_STATEMENT_KIND_DENY,
        agent_pb2.POLICY_STATEMENT_KIND_REQUIRE,
    ]
    assert block.statements[2].expression.startswith("message_send if resource.tenant != subject.tenant")
    assert (block.statements[0].location.line, block.statements[0].location.column) == (14, 18)


def test_optional_parameters_defaults_and_generic_types() -> None:
    d = load(source_of(ROOT / "examples" / "agents" / "research_assistant.symbi")).definition
    params = {p.name: p for p in d.parameters}
    assert params["max_results"].default_json == "5"
    assert params["sources"].optional
    assert params["sources"].type == "list<string>"
    assert dict(d.metadata.labels) == {"team": "research"}


SAME_AGENT_DSL = """
metadata {
    name = "summarizer"
    version = "1.0.0"
    author = "docs team"
    description = "Summarises long documents into a page"
}
agent summarizer(document: string, words: int = 300) -> Summary {
    capabilities = ["read_documents", "summarize", "read_memory", "write_memory"]
    tenant = "docs"
    policy memory_rules {
        allow: data_access(read, write) on "memory:*" if resource.owner == subject.id
        require: max_bytes "256KB" for data_access
        audit: data_access with outputs as "summaries"
    }
    with sandbox = "Tier1", timeout = 45s, memory = "256MB", cpu = 0.25, data_sensitivity = "internal",
         code_trust = "trusted", priority = "normal" {
        image = "symbi/base:bookworm"
        command = ["python3", "-c", "print('summary written')"]
    }
}
"""


def test_a_manifest_and_the_dsl_give_the_same_model() -> None:
    from_yaml = load(source_of(ROOT / "examples" / "agents" / "summarizer.yaml"))
    from_dsl = dsl(SAME_AGENT_DSL)
    assert from_dsl.ok
    assert model(from_yaml) == model(from_dsl)
    assert policy_for(from_yaml, AGENT_ID) == policy_for(from_dsl, AGENT_ID)


def test_toml_and_json_manifests_give_the_same_model_as_yaml() -> None:
    yaml_text = """
metadata: {name: pinger, version: 1.0.0}
parameters: [{name: host, type: string}, {name: count, type: int, default: 3}]
capabilities: [network]
policies:
  net: ['allow: resource_allocate if action.network == true']
with: {sandbox: Tier2, timeout: 20s, memory: 128MB, network: true}
task: {command: [ping, -c, "3"], env: {A: b}}
"""
    toml_text = """
capabilities = ["network"]
[metadata]
name = "pinger"
version = "1.0.0"
[[parameters]]
name = "host"
type = "string"
[[parameters]]
name = "count"
type = "int"
default = 3
[policies]
net = ["allow: resource_allocate if action.network == true"]
[with]
sandbox = "Tier2"
timeout = "20s"
memory = "128MB"
network = true
[task]
command = ["ping", "-c", "3"]
env = {A = "b"}
"""
    json_text = """{"metadata": {"name": "pinger", "version": "1.0.0"},
      "parameters": [{"name": "host", "type": "string"}, {"name": "count", "type": "int", "default": 3}],
      "capabilities": ["network"],
      "policies": {"net": ["allow: resource_allocate if action.network == true"]},
      "with": {"sandbox": "Tier2", "timeout": "20s", "memory": "128MB", "network": true},
      "task": {"command": ["ping", "-c", "3"], "env": {"A": "b"}}}"""
    built = [manifest(yaml_text, "yaml"), manifest(toml_text, "toml"), manifest(json_text, "json")]
    assert all(b.ok for b in built), [problems(b) for b in built]
    first = model(built[0])
    assert first.options.network_access
    assert first.task.image == "symbi/base:bookworm"  # the default image
    assert all(model(b) == first for b in built[1:])


def test_inline_policies_govern_only_their_agent() -> None:
    built = load(source_of(ROOT / "examples" / "agents" / "research_assistant.symbi"))
    generated = policy_for(built, AGENT_ID)
    assert generated is not None
    policy_set = PolicySet(1, {c.id: c for c in compile_sources(generated[1], "inline.yaml")})
    me = Principal("agent", AGENT_ID, tenant="research")
    other = Principal("agent", "0190aaaa-0000-7000-8000-000000000002", tenant="research")

    search = request("tool_invoke", me, Target("tool", "search/web"), operation="call")
    decision = policy_set.evaluate(search)
    assert decision.WhichOneof("outcome") == "allow_with_conditions"
    kinds = {c.WhichOneof("kind") for c in decision.allow_with_conditions.conditions}
    assert {"rate_limit", "require_audit"} <= kinds

    assert policy_set.evaluate(request("tool_invoke", other, Target("tool", "search/web"), operation="call")).deny.kind
    assert policy_set.evaluate(request("tool_invoke", me, Target("tool", "shell/run"), operation="call")).deny.kind

    pii = request("data_access", me, Target("document", "d1", labels=["pii"]), operation="read")
    denied = policy_set.evaluate(pii)
    assert denied.deny.kind == policy_pb2.DENY_KIND_RULE
    assert denied.deny.reason == "research never reads personal data"


def test_the_file_format_comes_from_the_suffix(tmp_path: Path) -> None:
    assert set(FORMATS) == {".symbi", ".yaml", ".yml", ".toml", ".json"}
    odd = tmp_path / "agent.txt"
    odd.write_text("agent a() {}")
    with pytest.raises(ValueError, match="unknown definition format"):
        source_of(odd)
    unspecified = load(agent_pb2.DefinitionSource(text=MINIMAL, name="x"))
    assert only_error(unspecified).code == "unknown_format"


# Syntax errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("agent a( {\n}", 1, 10, "unexpected '{'"),
        ('agent a() {\n  capabilities = ["x"\n}', 3, 1, "unexpected '}'"),
        ("agent a() {\n  with sandbox = {\n", 2, 18, "the file ends too early; expected"),
        ('agent a() {\n  tenant = "unterminated\n}', 2, 12, "this string is not closed on its line"),
        ("metadata {\n  name = \n}\nagent a() {}", 3, 1, "unexpected '}'"),
        ("agent a() {\n  policy p {\n    permit: x\n  }\n}", 3, 5, "unexpected 'permit'"),
        ("agnt a() {}", 1, 1, "unexpected 'agnt'"),
    ],
)
def test_syntax_errors_name_line_and_column(text: str, line: int, column: int, message: str) -> None:
    problem = only_error(dsl(text))
    assert problem.code == "syntax_error"
    assert (problem.location.file, problem.location.line, problem.location.column) == ("agent.symbi", line, column)
    assert message in problem.message


def test_a_syntax_error_says_what_was_expected() -> None:
    problem = only_error(dsl("agent a() {\n  capabilities = 3\n}"))
    assert "expected" in problem.message
    assert "'['" in problem.message


def test_comments_and_semicolons_are_allowed() -> None:
    text = 'agent a() { # the agent\n  tenant = "t"; // its tenant\n  with { command = ["true"]; }\n}'
    built = dsl(text)
    assert built.ok, problems(built)
    assert built.definition.tenant == "t"


# Meaning errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "line", "column", "message"),
    [
        ('capabilities = ["web_search", "teleport"]', "unknown_capability", 2, 33, "unknown capability 'teleport'"),
        ('capabilities = ["summarize", "summarize"]', "duplicate", 2, 32, "listed twice"),
        ('owner = "me"', "unknown_field", 2, 3, "unknown entry 'owner'"),
        ("with sandbox = Tier3 {}", "bad_value", 2, 8, "sandbox is one of Tier1, Tier2"),
        ("with timeout = 0s {}", "out_of_range", 2, 8, "timeout must be between"),
        ('with memory = "lots" {}', "bad_value", 2, 8, "not a memory size"),
        ("with memory = 2 {}", "out_of_range", 2, 8, "memory must be between 4 MiB"),
        ("with cpu = 0 {}", "out_of_range", 2, 8, "cpu must be between"),
        ('with cpu = "fast" {}', "wrong_type", 2, 8, "cpu must be a number"),
        ('with network = "yes" {}', "wrong_type", 2, 8, "network is true or false"),
        ("with colour = 1 {}", "unknown_option", 2, 8, "unknown option 'colour'"),
        ('with sandbox = "Tier2", pids = 20 {}', "out_of_range", 2, 27, "gVisor (Tier2) needs at least 96 pids"),
        ('with { command = "echo hi" }', "wrong_type", 2, 20, "command must be a list of strings"),
        ('with { user = "root" }', "unknown_field", 2, 10, "unknown task entry 'user'"),
        ("policy p {\n    allow: teleport\n  }", "bad_statement", 3, 12, "unknown enforcement point 'teleport'"),
        (
            "policy p {\n    deny: tool_invoke if subject.tenant ==\n  }",
            "bad_statement",
            3,
            41,
            "condition: condition ends too early",
        ),
        ("policy p {\n    require: sandbox Tier9 for tool_invoke\n  }", "bad_statement", 3, 22, "Tier1 or Tier2"),
        ("policy p {\n    require: limits(memory = 5)\n  }", "bad_statement", 3, 21, "unknown limit memory"),
        ("policy p {\n    audit: all with secrets\n  }", "bad_statement", 3, 21, "inputs or outputs"),
        ("policy p {\n    allow: tool_invoke\n  }\n  policy p {\n  }", "duplicate", 5, 10, "declared twice"),
    ],
)
def test_meaning_errors_point_at_the_value(body: str, code: str, line: int, column: int, message: str) -> None:
    problem = only_error(dsl(f"agent a() {{\n  {body}\n}}"))
    assert (problem.code, problem.location.line, problem.location.column) == (code, line, column), problem.message
    assert message in problem.message


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = 'agent Bad() {\n  capabilities = ["x"]\n  with cpu = -1, sandbox = "T" {}\n}'
    codes = [code for code, _, _ in problems(dsl(text))]
    assert codes == ["bad_name", "unknown_capability", "out_of_range", "bad_value"]


@pytest.mark.parametrize(
    ("metadata", "code", "message"),
    [
        ('name = "other"', "name_mismatch", "differs from the agent name 'a'"),
        ('version = "one"', "bad_version", "is not semantic"),
        ('owner = "x"', "unknown_field", "unknown metadata 'owner'"),
        ("author = 3", "wrong_type", "author must be a string"),
        ('labels = ["x"]', "wrong_type", "labels must be a map"),
    ],
)
def test_metadata_is_checked(metadata: str, code: str, message: str) -> None:
    problem = only_error(dsl(f"metadata {{\n  {metadata}\n}}\nagent a() {{}}"))
    assert (problem.code, problem.location.line) == (code, 2)
    assert message in problem.message


def test_duplicate_parameters_are_refused() -> None:
    problem = only_error(dsl("agent a(x: int, x: string) {}"))
    assert (problem.code, problem.location.column) == ("duplicate", 17)


def test_extra_capabilities_can_be_allowed_by_the_caller() -> None:
    text = 'agent a() {\n  capabilities = ["quantum"]\n}'
    assert not dsl(text).ok
    source = agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name="a.symbi")
    assert load(source, extra_capabilities=["quantum"]).ok


def test_a_policy_the_engine_refuses_is_a_problem_at_the_statement() -> None:
    # Parses as a statement, but the policy engine refuses a rate limit over a zero period.
    problem = only_error(dsl("agent a() {\n  policy p {\n    require: rate_limit 5 per 0s for tool_invoke\n  }\n}"))
    assert problem.code == "bad_statement"
    assert (problem.location.line, problem.location.column) == (3, 14)
    assert problem.message == "rate_limit.period: Input should be greater than 0"


# Manifest errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "code", "line"),
    [
        ("metadata: {name: a}\nagent: a\ncolour: blue\n", "yaml", "unknown_field", 3),
        ("metadata: [a]\n", "yaml", "wrong_type", 1),
        ("metadata: {name: a}\nparameters: [{name: x}]\n", "yaml", "bad_parameter", 2),
        ("metadata: {name: a}\npolicies:\n  p: 'allow: all'\n", "yaml", "wrong_type", 3),
        ("metadata: {name: a}\npolicies:\n  p: ['permit: all']\n", "yaml", "bad_statement", 3),
        ("metadata: {name: a\n", "yaml", "syntax_error", 2),
        ("- a\n- b\n", "yaml", "not_a_manifest", 1),
        ("[metadata\nname = 1", "toml", "syntax_error", 1),
        ("[with]\ncpu = \n", "toml", "syntax_error", 2),
        ('{"metadata": {"name": "a"}, "with": {"cpu": "x"}}', "json", "wrong_type", 1),
    ],
)
def test_manifest_problems_have_a_place(text: str, fmt: str, code: str, line: int) -> None:
    built = manifest(text, fmt)
    assert not built.ok
    assert (built.issues[0].code, built.issues[0].location.line) == (code, line), built.issues[0].message


def test_a_yaml_file_with_two_documents_is_refused() -> None:
    built = manifest("metadata: {name: a}\n---\nmetadata: {name: b}\n", "yaml")
    assert only_error(built).code == "one_agent"


def test_a_manifest_error_in_a_nested_value_points_at_it() -> None:
    built = manifest("metadata: {name: a}\nwith:\n  sandbox: Tier1\n  memory: huge\n", "yaml")
    problem = only_error(built)
    assert (problem.code, problem.location.line, problem.location.column) == ("bad_value", 4, 11)
