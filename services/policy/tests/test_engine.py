"""Decision semantics: deny overrides, default deny, errors deny, conditions merge."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_common.policy_client import Principal, Target, request
from symbi_policy.compiler import CompiledPolicy, compile_sources
from symbi_policy.engine import PolicySet
from symbi_policy.replication import deny_everything
from symbi_proto.v1 import policy_pb2, sandbox_pb2

ROOT = Path(__file__).resolve().parents[3]
AGENT = Principal("agent", "a1", tenant="t1", capabilities=["web_search"])


def policies(*texts: str, version: int = 1) -> PolicySet:
    compiled: list[CompiledPolicy] = []
    for i, text in enumerate(texts):
        compiled.extend(compile_sources(text, f"p{i}.yaml"))
    return PolicySet(version, {c.id: c for c in compiled})


def tool(tool_id: str = "search/web", who: Principal = AGENT, **kw: object) -> policy_pb2.EvaluateRequest:
    return request("tool_invoke", who, Target("tool", tool_id, **kw), operation="call")  # type: ignore[arg-type]


ALLOW_SEARCH = """
id: allow-search
rules:
  - name: search
    effect: allow
    actions: [tool_invoke]
    resources: ["tool:search/*"]
"""


def test_nothing_matches_so_deny_by_default() -> None:
    decision = policies().evaluate(tool())
    assert decision.deny.kind == policy_pb2.DENY_KIND_DEFAULT
    assert decision.deny.reason == "no policy allows tool_invoke 'call' by agent a1 on tool 'search/web'"
    assert (decision.policy_id, decision.matched_rule) == ("", "")
    assert decision.decision_id
    assert decision.time.seconds > 0


def test_an_allow_names_its_policy_version_and_rule() -> None:
    decision = policies(ALLOW_SEARCH, version=7).evaluate(tool())
    assert decision.WhichOneof("outcome") == "allow"
    assert (decision.policy_id, decision.policy_version, decision.matched_rule) == ("allow-search", 1, "search")
    assert decision.policy_set_version == 7


def test_deny_overrides_allow_whatever_the_priority() -> None:
    deny = """
id: low-priority-deny
priority: -100
rules:
  - {name: no-web, effect: deny, actions: [tool_invoke], resources: ["tool:search/web"], reason: not the web}
"""
    decision = policies(ALLOW_SEARCH.replace("id: allow-search", "id: allow-search\npriority: 900"), deny).evaluate(
        tool()
    )
    assert decision.deny.kind == policy_pb2.DENY_KIND_RULE
    assert decision.deny.reason == "not the web"
    assert (decision.policy_id, decision.matched_rule) == ("low-priority-deny", "no-web")


def test_priority_picks_which_deny_and_which_allow_is_named() -> None:
    text = """
id: p
rules:
  - {name: low, effect: deny, actions: [tool_invoke], priority: 1}
  - {name: high, effect: deny, actions: [tool_invoke], priority: 5}
"""
    assert policies(text).evaluate(tool()).matched_rule == "high"
    allows = """
id: q
rules:
  - {name: first-written, effect: allow, actions: [tool_invoke]}
  - {name: preferred, effect: allow, actions: [tool_invoke], priority: 10}
"""
    assert policies(allows).evaluate(tool()).matched_rule == "preferred"


def test_a_deny_rule_that_cannot_be_evaluated_denies() -> None:
    deny = """
id: d
rules:
  - {name: risky, effect: deny, actions: [tool_invoke], when: "context.risk_score > 0.8"}
"""
    decision = policies(ALLOW_SEARCH, deny).evaluate(tool())
    assert decision.deny.kind == policy_pb2.DENY_KIND_ERROR
    assert decision.deny.reason == "d/risky could not be evaluated: attribute context.risk_score is missing"
    assert decision.matched_rule == "risky"


def test_an_allow_rule_that_cannot_be_evaluated_does_not_allow() -> None:
    allow = """
id: a
rules:
  - {name: owner, effect: allow, actions: [tool_invoke], when: "resource.owner == subject.id"}
"""
    decision = policies(allow).evaluate(tool())
    assert decision.deny.kind == policy_pb2.DENY_KIND_ERROR
    assert "a/owner could not be evaluated: attribute resource.owner is missing" in decision.deny.reason
    # ... unless another rule allows it.
    assert policies(allow, ALLOW_SEARCH).evaluate(tool()).matched_rule == "search"


def test_conditions_merge_to_the_strictest() -> None:
    text = """
id: c
rules:
  - name: allow-tasks
    effect: allow
    actions: [resource_allocate]
    require: {sandbox_tier: Tier1, limits: {memory_mb: 1024, cpu_cores: 2}}
  - name: tighter
    effect: require
    actions: [resource_allocate]
    require: {sandbox_tier: Tier2, limits: {memory_mb: 512, execution_timeout: 30s}, on_exceed: cap}
  - name: audit
    type: audit
    effect: require
    actions: ["*"]
    require: {audit: {record_inputs: true, category: sox}}
  - name: audit-again
    type: audit
    effect: require
    actions: ["*"]
    require: {audit: {record_inputs: true, category: sox}}
"""
    decision = policies(text).evaluate(request("resource_allocate", AGENT, Target("task", "t1")))
    conditions = decision.allow_with_conditions.conditions
    kinds = [c.WhichOneof("kind") for c in conditions]
    assert kinds == ["require_sandbox_tier", "limit_resources", "require_audit"]
    assert conditions[0].require_sandbox_tier.minimum_tier == sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR
    assert conditions[0].rule == "c/tighter"
    limits = conditions[1].limit_resources.limits
    assert (limits.memory_mb, limits.cpu_cores, limits.execution_timeout.seconds) == (512, 2.0, 30)
    assert conditions[1].rule == "c/allow-tasks,c/tighter"
    assert decision.matched_rule == "allow-tasks"


def test_requests_over_a_limit_are_denied_or_capped() -> None:
    text = """
id: limits
rules:
  - name: tasks
    type: resource_usage
    effect: allow
    actions: [resource_allocate]
    require: {limits: {memory_mb: 512}, max_tokens: 1000}
"""
    ps = policies(text)
    over = request("resource_allocate", AGENT, Target("task", "t"), action_attributes={"memory_mb": 2048})
    decision = ps.evaluate(over)
    assert decision.deny.kind == policy_pb2.DENY_KIND_RULE
    assert decision.deny.reason == "requested memory_mb=2048 exceeds the limit 512 set by limits/tasks"
    tokens = request("resource_allocate", AGENT, Target("task", "t"), action_attributes={"tokens": 5000})
    assert "requested tokens=5000 exceeds the limit 1000" in ps.evaluate(tokens).deny.reason
    wrong = request("resource_allocate", AGENT, Target("task", "t"), action_attributes={"memory_mb": "lots"})
    assert ps.evaluate(wrong).deny.kind == policy_pb2.DENY_KIND_ERROR
    capped = policies(text.replace("max_tokens: 1000}", "max_tokens: 1000, on_exceed: cap}")).evaluate(over)
    assert capped.allow_with_conditions.conditions[0].limit_resources.limits.memory_mb == 512


def test_rate_limit_keys_are_filled_in_per_request() -> None:
    text = """
id: rl
rules:
  - name: calls
    type: resource_usage
    effect: allow
    actions: [tool_invoke]
    require: {rate_limit: {key: "agent:{subject.id}:tool:{resource.id}", limit: 60, period: 1m, burst: 5}}
"""
    ps = policies(text)
    for tool_id in ("search/web", "docs/read", "search/web"):
        (condition,) = ps.evaluate(tool(tool_id)).allow_with_conditions.conditions
        assert condition.rate_limit.key == f"agent:a1:tool:{tool_id}"
        assert (condition.rate_limit.limit, condition.rate_limit.period.seconds, condition.rate_limit.burst) == (
            60,
            60,
            5,
        )


def test_data_flow_destinations() -> None:
    text = (ROOT / "examples" / "policies" / "data-flow.yaml").read_text()
    ps = policies(text, ALLOW_SEARCH.replace("tool:search/*", "tool:*"))
    leak = ps.evaluate(tool("web/fetch", labels=["phi"]))
    assert leak.deny.reason == "regulated data (PHI/PII) may not flow to external destinations"
    external = request(
        "tool_invoke", AGENT, Target("tool", "mail/send", labels=["pii"], attributes={"destination": "external:x"})
    )
    assert ps.evaluate(external).matched_rule == "phi-never-external"
    inside = ps.evaluate(tool("search/web", labels=["pii"]))
    redact = [c for c in inside.allow_with_conditions.conditions if c.WhichOneof("kind") == "redact_fields"]
    assert list(redact[0].redact_fields.paths) == ["arguments.email", "arguments.phone"]
    assert ps.evaluate(tool("search/web")).WhichOneof("outcome") == "allow"


def test_except_destinations() -> None:
    text = """
id: only-internal
rules:
  - {name: r, type: data_flow, effect: deny, actions: ["*"], labels: [secret], except_destinations: ["tool:vault/*"]}
  - {name: ok, effect: allow, actions: ["*"]}
"""
    ps = policies(text)
    assert ps.evaluate(tool("vault/put", labels=["secret"])).WhichOneof("outcome") == "allow"
    assert ps.evaluate(tool("web/post", labels=["secret"])).matched_rule == "r"
    assert ps.evaluate(tool("web/post")).WhichOneof("outcome") == "allow"


def test_time_conditions_use_the_request_time() -> None:
    text = (ROOT / "examples" / "policies" / "agents-and-resources.yaml").read_text()
    ps = policies(text)
    admin = Principal("user", "ops", roles=["admin"])
    req = request("admin", admin, Target("policy", "x"), operation="register")
    monday = dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC)
    sunday = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
    assert ps.evaluate(req, now=monday).matched_rule == "office-hours-admin"
    assert ps.evaluate(req, now=sunday).deny.kind == policy_pb2.DENY_KIND_DEFAULT
    req.context.time.FromDatetime(sunday)  # the request's own time wins over the clock
    assert ps.evaluate(req, now=monday).deny.kind == policy_pb2.DENY_KIND_DEFAULT


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: setattr(r.action, "type", 0), "action.type is required"),
        (lambda r: setattr(r.action, "type", 99), "unknown action type 99"),
        (lambda r: setattr(r.context.subject, "kind", 0), "context.subject.kind is required"),
        (lambda r: setattr(r.context.subject, "id", ""), "context.subject.id is required"),
        (lambda r: setattr(r.context.resource, "type", ""), "context.resource.type is required"),
        (lambda r: setattr(r.context.resource, "id", ""), "tool_invoke requires resource.id"),
        (lambda r: r.context.resource.labels.extend(["x" * 1000] * 70), "the limit is 65536"),
    ],
)
def test_unacceptable_requests_are_denied_with_the_reason(mutate: object, reason: str) -> None:
    req = tool()
    mutate(req)  # type: ignore[operator]
    decision = policies(ALLOW_SEARCH.replace("tool:search/*", "*")).evaluate(req)
    assert decision.deny.kind == policy_pb2.DENY_KIND_INVALID_REQUEST
    assert reason in decision.deny.reason


@pytest.mark.parametrize(
    ("action", "resource", "operation", "missing"),
    [
        ("message_send", Target("agent"), "send", "resource.id"),
        ("data_access", Target("memory", "m1"), "", "action.operation"),
        ("admin", Target("policy", "p"), "", "action.operation"),
    ],
)
def test_each_enforcement_point_names_what_it_needs(
    action: str, resource: Target, operation: str, missing: str
) -> None:
    decision = policies().evaluate(request(action, AGENT, resource, operation=operation))
    assert decision.deny.kind == policy_pb2.DENY_KIND_INVALID_REQUEST
    assert f"{action} requires {missing}" in decision.deny.reason


def test_a_bug_in_a_matcher_denies_instead_of_raising() -> None:
    ps = policies(ALLOW_SEARCH)
    rule = ps.policies["allow-search"].rules[0]

    def broken(_facts: object) -> bool:
        raise TypeError("boom")

    rule.match = broken
    decision = ps.evaluate(tool())
    assert decision.deny.kind == policy_pb2.DENY_KIND_ERROR
    assert "internal error: TypeError('boom')" in decision.deny.reason
    rule.match = lambda _facts: "yes"  # a truthy non-boolean is not a match
    assert "not a boolean" in ps.evaluate(tool()).deny.reason


def test_an_unreadable_policy_denies_everything() -> None:
    (good,) = compile_sources(ALLOW_SEARCH, "a.yaml")
    broken = deny_everything(good.policy, "cannot compile")
    ps = PolicySet(2, {"allow-search": broken})
    for action in ("tool_invoke", "admin", "data_access"):
        decision = ps.evaluate(request(action, AGENT, Target("x", "y"), operation="read"))
        assert decision.deny.reason == "cannot compile"


def test_cache_ttl_is_granted_only_where_the_policy_allows_and_time_is_not_read() -> None:
    cached = ALLOW_SEARCH.replace("id: allow-search", "id: allow-search\ncache_ttl: 30s")
    assert policies(cached).evaluate(tool()).cache_ttl.seconds == 30
    assert policies(ALLOW_SEARCH).evaluate(tool()).cache_ttl.seconds == 0
    timed = cached.replace('resources: ["tool:search/*"]', 'resources: ["tool:search/*"]\n    when: time.hour >= 0')
    assert policies(timed).evaluate(tool()).cache_ttl.seconds == 0
    erroring = cached.replace('resources: ["tool:search/*"]', "when: context.x > 1")
    assert policies(erroring).evaluate(tool()).cache_ttl.seconds == 0


def test_explain_traces_every_rule_in_order() -> None:
    text = (ROOT / "examples" / "policies" / "tools.yaml").read_text()
    ps = policies(text)
    decision, trace = ps.explain(tool("shell/bash"))
    assert decision.deny.reason == "shell tools need the trusted_code capability"
    assert [step.rule for step in trace] == [
        "no-shell-for-untrusted",
        "search-tools",
        "shell-in-gvisor",
    ]
    first = trace[0]
    assert first.matched
    assert first.effect == policy_pb2.RULE_EFFECT_DENY
    assert "resource in ['tool:shell/*'] -> true" in first.detail
    assert 'subject.capabilities contains "trusted_code" -> false' in first.detail


# Properties ------------------------------------------------------------------------

rule_specs = st.lists(
    st.tuples(st.sampled_from(["allow", "deny"]), st.sampled_from(["true", "false", "context.missing > 1"])),
    min_size=0,
    max_size=6,
)


def _policy_from(specs: list[tuple[str, str]]) -> PolicySet:
    if not specs:
        return PolicySet(1, {})
    rules = "\n".join(
        f'  - {{name: r{i}, effect: {effect}, actions: [tool_invoke], when: "{when}"}}'
        for i, (effect, when) in enumerate(specs)
    )
    return policies(f"id: gen\nrules:\n{rules}\n")


@given(rule_specs)
@settings(max_examples=200, deadline=None)
def test_combining_semantics(specs: list[tuple[str, str]]) -> None:
    decision = _policy_from(specs).evaluate(tool())
    deny_hit = any(effect == "deny" and when != "false" for effect, when in specs)  # errors deny too
    allow_hit = any(effect == "allow" and when == "true" for effect, when in specs)
    allow_err = any(effect == "allow" and when.startswith("context") for effect, when in specs)
    if deny_hit:
        assert decision.HasField("deny")
        assert decision.deny.kind in (policy_pb2.DENY_KIND_RULE, policy_pb2.DENY_KIND_ERROR)
    elif allow_hit:
        assert decision.WhichOneof("outcome") == "allow"
    else:
        expected = policy_pb2.DENY_KIND_ERROR if allow_err else policy_pb2.DENY_KIND_DEFAULT
        assert decision.deny.kind == expected
    # Explain reaches the same outcome, having looked at every rule.
    explained, trace = _policy_from(specs).explain(tool())
    assert explained.WhichOneof("outcome") == decision.WhichOneof("outcome")
    assert explained.deny.kind == decision.deny.kind
    assert len(trace) == len(specs)


@given(rule_specs, rule_specs)
@settings(max_examples=100, deadline=None)
def test_adding_a_deny_rule_never_turns_a_deny_into_an_allow(
    base: list[tuple[str, str]], extra: list[tuple[str, str]]
) -> None:
    before = _policy_from(base).evaluate(tool())
    after = _policy_from(base + [("deny", when) for _, when in extra]).evaluate(tool())
    if before.HasField("deny"):
        assert after.HasField("deny")


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=100))
def test_replacing_a_set_carries_the_new_version(version: int, step: int) -> None:
    (compiled,) = compile_sources(ALLOW_SEARCH, "a.yaml")
    ps = PolicySet(version)
    newer = ps.replace(version + step, put=[compiled])
    assert newer.version == version + step
    assert ps.version == version
    assert newer.evaluate(tool()).policy_set_version == version + step
    assert "allow-search" not in ps.policies  # the old snapshot is untouched
