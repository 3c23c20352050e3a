"""Deciding requests against an immutable, versioned set of compiled policies.

Semantics (``docs/policy.md`` has the long form):

1. A request that is malformed, oversized, of an unknown action type or missing the
   attributes its enforcement point needs is denied (``DENY_KIND_INVALID_REQUEST``).
2. Rules are indexed by enforcement point (and, in large sets, by the resource
   patterns they name: ``index.py``) and ordered by policy priority, then rule
   priority (higher first), then policy id and position.
3. **Deny overrides.** If any deny rule matches, the first one in that order decides.
   A deny rule that cannot be evaluated (a missing attribute, a type error) also
   denies (``DENY_KIND_ERROR``): an unreadable prohibition is still a prohibition.
4. Otherwise the first matching allow rule decides. If none matches the request is
   denied by default (``DENY_KIND_DEFAULT``, or ``DENY_KIND_ERROR`` naming the allow
   rule that could not be evaluated).
5. An allow collects the conditions of every matching ``require`` rule and of every
   matching allow rule with a ``require:`` block, merged to the strictest set; a
   request over a limit with ``on_exceed: deny`` is denied; a require rule that cannot
   be evaluated denies, because its obligations cannot be known.

``PolicySet`` is never mutated: an update builds a new one and swaps the reference,
so an evaluation in flight always sees one consistent version.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from symbi_common.ids import new_id
from symbi_policy.compiler import ALL_ACTIONS, CompiledPolicy, CompiledRule
from symbi_policy.facts import ACTION_NAMES, SUBJECT_KINDS, EvalError, Facts
from symbi_policy.index import RuleIndex
from symbi_policy.obligations import merge
from symbi_proto.v1 import policy_pb2

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
MERGE_CACHE_SIZE = 4096

# What each enforcement point needs beyond subject kind/id and resource type: a Facts field and its meaning.
REQUIRED: dict[int, tuple[str, str]] = {
    policy_pb2.ACTION_TYPE_MESSAGE_SEND: ("resource_id", "resource.id (the recipient agent or topic)"),
    policy_pb2.ACTION_TYPE_TOOL_INVOKE: ("resource_id", "resource.id (the tool as <server>/<name>)"),
    policy_pb2.ACTION_TYPE_DATA_ACCESS: ("operation", "action.operation (read, write or delete)"),
    policy_pb2.ACTION_TYPE_ADMIN: ("operation", "action.operation (what is administered)"),
}
ALLOW, CONDITIONS, DENY = "allow", "allow_with_conditions", "deny"


@dataclass(slots=True)
class Verdict:
    """A decision before it is stamped: outcome, deny kind and reason, deciding rule, conditions."""

    outcome: str
    deny_kind: int = 0
    why: str | Callable[[], str] = ""
    """The reason, or a function that words it (a default deny's reason is only worded if read)."""
    rule: CompiledRule | None = None
    conditions: list[policy_pb2.Condition] = field(default_factory=list)
    cache_ttl_s: float = 0.0

    @property
    def reason(self) -> str:
        if not isinstance(self.why, str):
            self.why = self.why()
        return self.why


@dataclass(frozen=True, slots=True)
class _Bucket:
    rules: tuple[CompiledRule, ...]
    denies: RuleIndex
    allows: RuleIndex
    requires: RuleIndex
    cache_ttl_s: float


_EMPTY = _Bucket((), RuleIndex(()), RuleIndex(()), RuleIndex(()), 0.0)
Outcome = bool | EvalError


class PolicySet:
    """An immutable snapshot: the policies in force at one policy-set version."""

    def __init__(
        self,
        version: int = 0,
        policies: Mapping[str, CompiledPolicy] | None = None,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.version = version
        self.policies: dict[str, CompiledPolicy] = dict(policies or {})
        self.max_request_bytes = max_request_bytes
        self._index = {action: self._bucket(action) for action in ALL_ACTIONS}
        self._merge_cache: dict[tuple[int, ...], list[policy_pb2.Condition]] = {}

    def _bucket(self, action: int) -> _Bucket:
        rules = sorted(
            (rule for policy in self.policies.values() for rule in policy.rules if action in rule.actions),
            key=lambda rule: rule.sort_key,
        )
        if not rules:
            return _EMPTY
        contributing = {rule.policy_id for rule in rules}
        ttl = 0.0 if any(r.uses_time for r in rules) else min(self.policies[p].cache_ttl_s for p in contributing)
        return _Bucket(
            rules=tuple(rules),
            denies=RuleIndex([r for r in rules if r.effect == policy_pb2.RULE_EFFECT_DENY]),
            allows=RuleIndex([r for r in rules if r.effect == policy_pb2.RULE_EFFECT_ALLOW]),
            requires=RuleIndex([r for r in rules if r.obligations is not None]),
            cache_ttl_s=ttl,
        )

    def replace(self, version: int, *, put: Iterable[CompiledPolicy] = (), remove: Iterable[str] = ()) -> PolicySet:
        """A new set at ``version`` with some policies added or replaced and some removed."""
        policies = dict(self.policies)
        for policy_id in remove:
            policies.pop(policy_id, None)
        for policy in put:
            policies[policy.id] = policy
        return PolicySet(version, policies, max_request_bytes=self.max_request_bytes)

    # Deciding -------------------------------------------------------------------

    def evaluate(
        self, request: policy_pb2.EvaluateRequest, *, now: dt.datetime | None = None
    ) -> policy_pb2.PolicyDecision:
        """Decide one request: the protobuf decision, with a fresh decision id and time."""
        return self.to_decision(self.decide(request, now=now), now=now)

    def explain(
        self, request: policy_pb2.EvaluateRequest, *, now: dt.datetime | None = None
    ) -> tuple[policy_pb2.PolicyDecision, list[policy_pb2.TraceStep]]:
        """The decision and one trace step per rule considered, in evaluation order."""
        trace: list[policy_pb2.TraceStep] = []
        verdict = self.decide(request, now=now, trace=trace)
        return self.to_decision(verdict, now=now), trace

    def decide(
        self,
        request: policy_pb2.EvaluateRequest,
        *,
        now: dt.datetime | None = None,
        trace: list[policy_pb2.TraceStep] | None = None,
    ) -> Verdict:
        """The verdict for one request (the in-process API; no ids, no clock, no protobuf out)."""
        try:
            facts = Facts(request, now)
            problem = self.check_request(request, facts)
            if problem is not None:
                return Verdict(DENY, policy_pb2.DENY_KIND_INVALID_REQUEST, problem)
            if trace is None:
                return self._combine(facts, None)
            seen: dict[int, Outcome] = {}

            def probe(rule: CompiledRule) -> Outcome:
                outcome = seen.get(id(rule))
                if outcome is None:
                    outcome = seen[id(rule)] = _traced(rule, facts, trace)
                return outcome

            return self._combine(facts, probe)
        except Exception as exc:  # fail closed: a bug in evaluation is a deny, never an exception
            return Verdict(DENY, policy_pb2.DENY_KIND_ERROR, f"policy evaluation failed: {exc!r}")

    def _combine(self, facts: Facts, probe: Callable[[CompiledRule], Outcome] | None) -> Verdict:
        """The combining algorithm. With a ``probe`` (explain) every rule is evaluated, for the trace;
        without one, rules are matched directly and evaluation stops as soon as the outcome is known."""
        exhaustive = probe is not None
        bucket = self._index.get(facts.action_type, _EMPTY)
        rtype, rid = facts.resource_type, facts.resource_id
        denied: tuple[CompiledRule, Outcome] | None = None
        for rule in bucket.denies.candidates(rtype, rid):
            outcome = _match(rule, facts) if probe is None else probe(rule)
            if outcome is not False and denied is None:
                denied = (rule, outcome)
                if not exhaustive:
                    break
        allowed: CompiledRule | None = None
        failed: tuple[CompiledRule, EvalError] | None = None
        if denied is None or exhaustive:
            for rule in bucket.allows.candidates(rtype, rid):
                outcome = _match(rule, facts) if probe is None else probe(rule)
                if outcome is True and allowed is None:
                    allowed = rule
                    if not exhaustive:
                        break
                elif isinstance(outcome, EvalError) and failed is None:
                    failed = (rule, outcome)
        if denied is not None:
            rule, outcome = denied
            if outcome is True:
                return Verdict(DENY, policy_pb2.DENY_KIND_RULE, rule.reason, rule)
            return Verdict(DENY, policy_pb2.DENY_KIND_ERROR, f"{rule.ref} could not be evaluated: {outcome}", rule)
        if allowed is None:
            if failed is not None:
                rule, error = failed
                reason = f"no rule allows {describe(facts)}; {rule.ref} could not be evaluated: {error}"
                return Verdict(DENY, policy_pb2.DENY_KIND_ERROR, reason, rule)
            wording = lambda: f"no policy allows {describe(facts)}"  # noqa: E731 - worded only when read
            return Verdict(DENY, policy_pb2.DENY_KIND_DEFAULT, wording, cache_ttl_s=bucket.cache_ttl_s)
        contributing: list[CompiledRule] = []
        dynamic: list[policy_pb2.Condition] = []
        for rule in bucket.requires.candidates(rtype, rid):
            outcome = True if rule is allowed else _match(rule, facts) if probe is None else probe(rule)
            if isinstance(outcome, EvalError):
                reason = f"conditions of {rule.ref} could not be evaluated: {outcome}"
                return Verdict(DENY, policy_pb2.DENY_KIND_ERROR, reason, rule)
            if outcome and rule.obligations is not None:
                try:
                    violation = rule.obligations.violation(facts)
                    if violation is None:
                        dynamic.extend(rule.obligations.dynamic(facts))
                except EvalError as exc:
                    return Verdict(DENY, policy_pb2.DENY_KIND_ERROR, f"{rule.ref}: {exc}", rule)
                if violation is not None:
                    return Verdict(DENY, policy_pb2.DENY_KIND_RULE, violation, rule)
                contributing.append(rule)
        if not contributing:
            return Verdict(ALLOW, rule=allowed, cache_ttl_s=bucket.cache_ttl_s)
        conditions = [*self._merged(tuple(contributing)), *_distinct(dynamic)]
        return Verdict(CONDITIONS, rule=allowed, conditions=conditions, cache_ttl_s=bucket.cache_ttl_s)

    def _merged(self, rules: tuple[CompiledRule, ...]) -> list[policy_pb2.Condition]:
        """The merged static conditions of a combination of rules, computed once per combination."""
        key = tuple(id(rule) for rule in rules)
        merged = self._merge_cache.get(key)
        if merged is None:
            merged = merge([c for rule in rules if rule.obligations is not None for c in rule.obligations.static])
            if len(self._merge_cache) < MERGE_CACHE_SIZE:
                self._merge_cache[key] = merged
        return merged

    def to_decision(
        self, verdict: Verdict, *, decision_id: str = "", now: dt.datetime | None = None
    ) -> policy_pb2.PolicyDecision:
        """The wire form of a verdict, stamped with this set's version, an id and a time."""
        decision = policy_pb2.PolicyDecision(policy_set_version=self.version, decision_id=decision_id or new_id())
        if now is None:
            stamp = decision.time
            stamp.seconds, stamp.nanos = divmod(time.time_ns(), 1_000_000_000)
        else:
            decision.time.FromDatetime(now)
        if verdict.outcome == ALLOW:
            decision.allow.SetInParent()
        elif verdict.outcome == CONDITIONS:
            decision.allow_with_conditions.conditions.extend(verdict.conditions)
        else:
            decision.deny.kind = verdict.deny_kind  # type: ignore[assignment]
            decision.deny.reason = verdict.reason
        rule = verdict.rule
        if rule is not None:
            decision.policy_id = rule.policy_id
            decision.policy_version = rule.policy_version
            decision.matched_rule = rule.name
        if verdict.cache_ttl_s:
            decision.cache_ttl.seconds, nanos = divmod(round(verdict.cache_ttl_s * 1e9), 1_000_000_000)
            decision.cache_ttl.nanos = nanos
        return decision

    def check_request(self, request: policy_pb2.EvaluateRequest, facts: Facts) -> str | None:
        """Why a request cannot be evaluated at all, or None."""
        size = request.ByteSize()
        if size > self.max_request_bytes:
            return f"request is {size} bytes; the limit is {self.max_request_bytes}"
        action = facts.action_type
        if action not in ACTION_NAMES:
            return "action.type is required (the enforcement point)" if not action else f"unknown action type {action}"
        if facts.subject_kind not in SUBJECT_KINDS:
            return "context.subject.kind is required (agent, user or service)"
        if not facts.subject_id:
            return "context.subject.id is required"
        if not facts.resource_type:
            return "context.resource.type is required"
        need = REQUIRED.get(action)
        if need is not None and not getattr(facts, need[0]):
            return f"{ACTION_NAMES[action]} requires {need[1]}"
        return None

    def rules_for(self, action: int) -> tuple[CompiledRule, ...]:
        return self._index.get(action, _EMPTY).rules


def _match(rule: CompiledRule, facts: Facts) -> Outcome:
    try:
        result = rule.match(facts)
    except Exception as exc:
        return _as_error(exc)
    if result is True or result is False:
        return result
    return EvalError(f"{rule.ref} yielded {result!r}, not a boolean")  # never read a truthy value as a match


def _as_error(exc: Exception) -> EvalError:
    """An evaluation failure as an ``EvalError``; a bug must not become an allow."""
    return exc if isinstance(exc, EvalError) else EvalError(f"internal error: {exc!r}")


def _traced(rule: CompiledRule, facts: Facts, trace: list[policy_pb2.TraceStep]) -> Outcome:
    """Evaluate with the recording matcher and append one trace step."""
    facts.trace = []
    started = time.perf_counter_ns()
    outcome: Outcome
    try:
        result = rule.explain_match()(facts)
        outcome = result if result is True or result is False else EvalError(f"yielded {result!r}, not a boolean")
    except Exception as exc:
        outcome = _as_error(exc)
    step = policy_pb2.TraceStep(
        policy_id=rule.policy_id,
        policy_version=rule.policy_version,
        rule=rule.name,
        effect=rule.effect,  # type: ignore[arg-type]
        matched=outcome is True,
        detail="; ".join(facts.trace) or ("matches every request" if outcome is True else ""),
    )
    if isinstance(outcome, EvalError) and not facts.trace:
        step.detail = f"error: {outcome}"
    step.elapsed.FromNanoseconds(time.perf_counter_ns() - started)
    trace.append(step)
    facts.trace = None
    return outcome


def _distinct(conditions: list[policy_pb2.Condition]) -> list[policy_pb2.Condition]:
    if len(conditions) < 2:
        return conditions
    seen: set[bytes] = set()
    out = []
    for condition in conditions:
        body = condition.rate_limit.SerializeToString(deterministic=True)
        if body not in seen:
            seen.add(body)
            out.append(condition)
    return out


def describe(facts: Facts) -> str:
    """``tool_invoke 'call' by agent a1 on tool 'search/web'`` -- for reasons and logs."""
    action = ACTION_NAMES.get(facts.action_type, str(facts.action_type))
    operation = f" {facts.operation!r}" if facts.operation else ""
    target = f" {facts.resource_id!r}" if facts.resource_id else ""
    kind = SUBJECT_KINDS.get(facts.subject_kind, "?")
    return f"{action}{operation} by {kind} {facts.subject_id} on {facts.resource_type}{target}"


def outcome_name(decision: policy_pb2.PolicyDecision) -> str:
    """``allow``, ``deny`` or ``allow_with_conditions``."""
    return str(decision.WhichOneof("outcome") or "deny")
