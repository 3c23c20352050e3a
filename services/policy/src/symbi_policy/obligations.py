"""Obligations: what a ``require:`` block attaches to an allow, and how several combine.

A rule's ``require:`` compiles into an ``Obligations``: the ``Condition`` messages it
attaches (a rate-limit key is filled in per request from its template) and, with
``on_exceed: deny`` (the default), checks that deny a request asking for more than
the limits. Requested amounts are read from ``Action.attributes``:

==================  ====================================
limit               requested by action attribute
==================  ====================================
limits.memory_mb    ``memory_mb``
limits.cpu_cores    ``cpu_cores``
limits.*_mbps       ``disk_io_mbps``, ``network_io_mbps``
execution_timeout   ``execution_timeout_s``
limits.max_pids     ``max_pids``
max_output_bytes    ``max_output_bytes``
max_tokens          ``tokens``
max_bytes           ``bytes``
==================  ====================================

``merge`` combines the conditions of every matching rule into the strictest set: the
highest sandbox tier, the lowest of each limit, token and byte cap; rate limits,
redactions, audit requirements and approvals are all kept (identical ones once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from symbi_common.attributes import from_value
from symbi_policy.document import LimitsSpec, RequireSpec
from symbi_policy.expr import compile_template
from symbi_policy.facts import EvalError, Facts
from symbi_proto.v1 import common_pb2, policy_pb2, sandbox_pb2

TIERS = {"Tier1": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "Tier2": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}
_LIMIT_FIELDS = ("memory_mb", "cpu_cores", "disk_io_mbps", "network_io_mbps", "max_pids", "max_output_bytes")

KEY_CACHE_SIZE = 10_000  # filled-in rate-limit conditions kept per rule; never mutated once built

Check = Callable[[Facts], str | None]


@dataclass(frozen=True, slots=True)
class Obligations:
    static: tuple[policy_pb2.Condition, ...]
    rate_limit: tuple[Callable[[Facts], str], policy_pb2.Condition] | None
    checks: tuple[Check, ...]
    uses_time: bool
    by_key: dict[str, policy_pb2.Condition] = field(default_factory=dict, compare=False, repr=False)

    def conditions(self, facts: Facts) -> list[policy_pb2.Condition]:
        return [*self.static, *self.dynamic(facts)]

    def dynamic(self, facts: Facts) -> list[policy_pb2.Condition]:
        """The conditions filled in from the request (a rate-limit key); built once per key."""
        if self.rate_limit is None:
            return []
        key_of, template = self.rate_limit
        key = key_of(facts)
        condition = self.by_key.get(key)
        if condition is None:
            condition = policy_pb2.Condition()
            condition.CopyFrom(template)
            condition.rate_limit.key = key
            if len(self.by_key) >= KEY_CACHE_SIZE:
                self.by_key.clear()
            self.by_key[key] = condition
        return [condition]

    def violation(self, facts: Facts) -> str | None:
        for check in self.checks:
            problem = check(facts)
            if problem is not None:
                return problem
        return None


def compile_obligations(spec: RequireSpec, rule_ref: str) -> Obligations:
    """Conditions and limit checks of one ``require:`` block (templates compiled here)."""
    static: list[policy_pb2.Condition] = []

    def add(**kind: object) -> None:
        static.append(policy_pb2.Condition(rule=rule_ref, **kind))  # type: ignore[arg-type]

    if spec.sandbox_tier:
        add(require_sandbox_tier=policy_pb2.RequireSandboxTier(minimum_tier=TIERS[spec.sandbox_tier]))
    if spec.limits is not None:
        add(limit_resources=policy_pb2.LimitResources(limits=resource_limits(spec.limits)))
    if spec.max_tokens is not None:
        add(max_tokens=policy_pb2.MaxTokens(limit=spec.max_tokens))
    if spec.max_bytes is not None:
        add(max_bytes=policy_pb2.MaxBytes(limit=spec.max_bytes))
    if spec.redact is not None:
        add(redact_fields=policy_pb2.RedactFields(paths=spec.redact.paths, replacement=spec.redact.replacement))
    if spec.audit is not None:
        audit = spec.audit
        add(
            require_audit=policy_pb2.RequireAudit(
                record_inputs=audit.record_inputs, record_outputs=audit.record_outputs, category=audit.category
            )
        )
    if spec.human_approval is not None:
        approval = policy_pb2.RequireHumanApproval(
            approver_group=spec.human_approval.approver_group, reason=spec.human_approval.reason
        )
        approval.timeout.FromNanoseconds(round(spec.human_approval.timeout * 1e9))
        add(require_human_approval=approval)
    rate_limit = None
    uses_time = False
    if spec.rate_limit is not None:
        key_of, uses_time = compile_template(spec.rate_limit.key)
        limit = policy_pb2.RateLimit(limit=spec.rate_limit.limit, burst=spec.rate_limit.burst)
        limit.period.FromNanoseconds(round(spec.rate_limit.period * 1e9))
        rate_limit = (key_of, policy_pb2.Condition(rule=rule_ref, rate_limit=limit))
    checks = _checks(spec, rule_ref) if spec.on_exceed == "deny" else ()
    return Obligations(tuple(static), rate_limit, checks, uses_time)


def resource_limits(spec: LimitsSpec) -> common_pb2.ResourceLimits:
    limits = common_pb2.ResourceLimits()
    for name in _LIMIT_FIELDS:
        value = getattr(spec, name)
        if value is not None:
            setattr(limits, name, value)
    if spec.execution_timeout is not None:
        limits.execution_timeout.FromNanoseconds(round(spec.execution_timeout * 1e9))
    return limits


def _checks(spec: RequireSpec, rule_ref: str) -> tuple[Check, ...]:
    caps: list[tuple[str, float]] = []
    if spec.limits is not None:
        for name in _LIMIT_FIELDS:
            value = getattr(spec.limits, name)
            if value is not None:
                caps.append((name, float(value)))
        if spec.limits.execution_timeout is not None:
            caps.append(("execution_timeout_s", spec.limits.execution_timeout))
    if spec.max_tokens is not None:
        caps.append(("tokens", float(spec.max_tokens)))
    if spec.max_bytes is not None:
        caps.append(("bytes", float(spec.max_bytes)))
    return tuple(_cap_check(name, cap, rule_ref) for name, cap in caps)


def _cap_check(name: str, cap: float, rule_ref: str) -> Check:
    def check(facts: Facts) -> str | None:
        attrs = facts.action_attrs
        if name not in attrs:
            return None
        requested = from_value(attrs[name])
        if isinstance(requested, bool) or not isinstance(requested, (int, float)):
            raise EvalError(f"action.{name} must be a number to check it against {rule_ref}")
        if requested > cap:
            return f"requested {name}={_num(requested)} exceeds the limit {_num(cap)} set by {rule_ref}"
        return None

    return check


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def merge(conditions: list[policy_pb2.Condition]) -> list[policy_pb2.Condition]:
    """The strictest combination of conditions from every matching rule, in a stable order."""
    tier: policy_pb2.Condition | None = None
    limits: policy_pb2.Condition | None = None
    caps: dict[str, policy_pb2.Condition] = {}
    rest: list[policy_pb2.Condition] = []
    seen: set[bytes] = set()
    for condition in conditions:
        kind = condition.WhichOneof("kind")
        if kind == "require_sandbox_tier":
            if tier is None or condition.require_sandbox_tier.minimum_tier > tier.require_sandbox_tier.minimum_tier:
                tier = condition
        elif kind in ("max_tokens", "max_bytes"):
            current = caps.get(kind)
            if current is None or getattr(condition, kind).limit < getattr(current, kind).limit:
                caps[kind] = condition
        elif kind == "limit_resources":
            limits = condition if limits is None else _tighter(limits, condition)
        else:
            body = getattr(condition, str(kind)).SerializeToString(deterministic=True)
            if body not in seen:
                seen.add(body)
                rest.append(condition)
    head = [c for c in (tier, limits, caps.get("max_tokens"), caps.get("max_bytes")) if c is not None]
    return head + rest


def _tighter(a: policy_pb2.Condition, b: policy_pb2.Condition) -> policy_pb2.Condition:
    out = policy_pb2.Condition(rule=",".join(dict.fromkeys(f"{a.rule},{b.rule}".split(","))))
    la, lb, lo = a.limit_resources.limits, b.limit_resources.limits, out.limit_resources.limits
    for name in _LIMIT_FIELDS:
        values = [v for v in (getattr(la, name), getattr(lb, name)) if v]
        if values:
            setattr(lo, name, min(values))
    timeouts = [t for t in (la.execution_timeout, lb.execution_timeout) if t.ToNanoseconds() > 0]
    if timeouts:
        lo.execution_timeout.CopyFrom(min(timeouts, key=lambda t: t.ToNanoseconds()))
    return out
