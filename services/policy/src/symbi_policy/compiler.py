"""Compile a policy document once into rules that evaluate with no parsing.

Each rule becomes a ``CompiledRule``: the enforcement points it applies to (the
engine indexes rules by them), one matcher closure built from its filters
(``operations``, ``resources``, data-flow ``labels``/``destinations``) and its
``when`` condition, and its obligations. Every semantic check happens here, with
the file, line and column of the offending value, so a policy that compiles cannot
fail for a reason its author could have been told about.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from symbi_policy.document import (
    DocumentError,
    Issue,
    Loaded,
    Location,
    PolicyDoc,
    RuleSpec,
    load_documents,
    validate_model,
)
from symbi_policy.expr import ExprError, Predicate, compile_expression, show
from symbi_policy.facts import ACTIONS_BY_NAME, Facts, accessor
from symbi_policy.obligations import Obligations, compile_obligations
from symbi_proto.v1 import policy_pb2

RULE_TYPES = {
    "access_control": policy_pb2.POLICY_TYPE_ACCESS_CONTROL,
    "data_flow": policy_pb2.POLICY_TYPE_DATA_FLOW,
    "resource_usage": policy_pb2.POLICY_TYPE_RESOURCE_USAGE,
    "audit": policy_pb2.POLICY_TYPE_AUDIT_REQUIREMENT,
}
EFFECTS = {
    "allow": policy_pb2.RULE_EFFECT_ALLOW,
    "deny": policy_pb2.RULE_EFFECT_DENY,
    "require": policy_pb2.RULE_EFFECT_CONDITION,
}
ALL_ACTIONS = frozenset(ACTIONS_BY_NAME.values())


@dataclass(slots=True)
class CompiledRule:
    policy_id: str
    policy_version: int
    policy_priority: int
    name: str
    position: int
    spec: RuleSpec
    rule_type: int
    effect: int
    actions: frozenset[int]
    match: Predicate
    obligations: Obligations | None
    reason: str
    uses_time: bool
    _explain: Predicate | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.policy_id}/{self.name}"

    @property
    def sort_key(self) -> tuple[int, int, str, int]:
        """Evaluation order: higher policy priority, then higher rule priority, then id and position."""
        return (-self.policy_priority, -self.spec.priority, self.policy_id, self.position)

    def explain_match(self) -> Predicate:
        """The same matcher, recording each leaf into ``Facts.trace`` (built on first use)."""
        if self._explain is None:
            self._explain = _matcher(self.spec, record=True)[0]
        return self._explain


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: policy_pb2.Policy
    rules: tuple[CompiledRule, ...]
    cache_ttl_s: float
    warnings: tuple[Issue, ...] = ()

    @property
    def id(self) -> str:
        return self.policy.id

    @property
    def version(self) -> int:
        return self.policy.version


def compile_sources(
    text: str,
    name: str,
    fmt: str = "yaml",
    *,
    version: int = 1,
    created_by: str = "",
    created_at: dt.datetime | None = None,
) -> list[CompiledPolicy]:
    """Every policy in a file or API submission; all problems raised together."""
    docs = load_documents(text, name, fmt)
    compiled: list[CompiledPolicy] = []
    issues: list[Issue] = []
    for loaded in docs:
        try:
            compiled.append(compile_loaded(loaded, fmt, version, created_by, created_at))
        except DocumentError as exc:
            issues.extend(exc.issues)
    ids = [c.id for c in compiled]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        issues.append(Issue(f"policy id {dup!r} appears more than once", Location(name), "duplicate_policy"))
    if issues:
        raise DocumentError(issues)
    return compiled


def compile_stored(policy: policy_pb2.Policy) -> CompiledPolicy:
    """Recompile a stored policy (a replica applying an update) at its own version."""
    docs = load_documents(policy.source.text, policy.source.name or policy.id, policy.source.format or "yaml")
    if len(docs) != 1:
        raise DocumentError([Issue("a stored policy holds exactly one document", Location(policy.source.name))])
    compiled = compile_loaded(docs[0], policy.source.format or "yaml", policy.version, policy.created_by, None)
    if compiled.id != policy.id:
        raise DocumentError(
            [Issue(f"stored policy {policy.id!r} has id {compiled.id!r}", Location(policy.source.name))]
        )
    compiled.policy.CopyFrom(policy)
    return compiled


def compile_loaded(
    loaded: Loaded, fmt: str, version: int, created_by: str, created_at: dt.datetime | None
) -> CompiledPolicy:
    doc = validate_model(loaded)
    issues: list[Issue] = []
    warnings: list[Issue] = []
    rules: list[CompiledRule] = []
    seen: set[str] = set()
    for index, spec in enumerate(doc.rules):
        where = ("rules", index)
        if spec.name in seen:
            issues.append(Issue(f"rule name {spec.name!r} is used twice", loaded.where((*where, "name"))))
        seen.add(spec.name)
        try:
            rules.append(_compile_rule(doc, spec, index, version, loaded, warnings))
        except DocumentError as exc:
            issues.extend(exc.issues)
    if issues:
        raise DocumentError(issues)
    policy = _policy_message(doc, loaded, fmt, version, created_by, created_at, rules)
    return CompiledPolicy(policy, tuple(rules), doc.cache_ttl, tuple(warnings))


def _policy_message(
    doc: PolicyDoc,
    loaded: Loaded,
    fmt: str,
    version: int,
    created_by: str,
    created_at: dt.datetime | None,
    rules: list[CompiledRule],
) -> policy_pb2.Policy:
    policy = policy_pb2.Policy(
        id=doc.id,
        version=version,
        types=sorted({rule.rule_type for rule in rules}),  # type: ignore[misc]
        description=doc.description,
        source=policy_pb2.PolicySource(text=loaded.text, format=fmt, name=loaded.name),
        source_sha256=hashlib.sha256(loaded.text.encode()).digest(),
        rules=[rule.name for rule in sorted(rules, key=lambda r: r.sort_key)],
        created_by=created_by,
        priority=doc.priority,
    )
    policy.created_at.FromDatetime(created_at or dt.datetime.now(dt.UTC))
    return policy


def _compile_rule(
    doc: PolicyDoc, spec: RuleSpec, index: int, version: int, loaded: Loaded, warnings: list[Issue]
) -> CompiledRule:
    base: tuple[str | int, ...] = ("rules", index)
    ref = f"{doc.id}/{spec.name}"

    def fail(message: str, *path: str | int, location: Location | None = None) -> DocumentError:
        return DocumentError([Issue(f"rule {spec.name}: {message}", location or loaded.where((*base, *path)))])

    _check_shape(spec, fail)
    actions: set[int] = set()
    for i, name in enumerate(spec.actions):
        if name == "*":
            actions |= ALL_ACTIONS
        elif name in ACTIONS_BY_NAME:
            actions.add(ACTIONS_BY_NAME[name])
        else:
            raise fail(f"unknown action {name!r} (one of {', '.join(ACTIONS_BY_NAME)} or *)", "actions", i)
    try:
        match, uses_time = _matcher(spec, record=False)
    except ExprError as exc:
        raise fail(str(exc), location=_expr_location(loaded, (*base, "when"), exc)) from None
    except _FilterError as exc:
        raise fail(str(exc), *exc.path) from None
    obligations = None
    if spec.require is not None:
        try:
            obligations = compile_obligations(spec.require, ref)
        except ExprError as exc:
            raise fail(str(exc), "require", "rate_limit", "key") from None
        uses_time = uses_time or obligations.uses_time
    if spec.effect == "allow" and not spec.when and not spec.resources and not spec.operations and "*" in spec.actions:
        warnings.append(Issue(f"rule {spec.name}: allows every request", loaded.where(base), "broad_allow", True))
    reason = spec.reason or (f"denied by {ref}" + (f": {spec.description}" if spec.description else ""))
    return CompiledRule(
        policy_id=doc.id,
        policy_version=version,
        policy_priority=doc.priority,
        name=spec.name,
        position=index,
        spec=spec,
        rule_type=RULE_TYPES[spec.type],
        effect=EFFECTS[spec.effect],
        actions=frozenset(actions),
        match=match,
        obligations=obligations,
        reason=reason,
        uses_time=uses_time,
    )


def _check_shape(spec: RuleSpec, fail: Callable[..., DocumentError]) -> None:
    req = spec.require
    if spec.effect == "require" and req is None:
        raise fail("effect require needs a require: block", "effect")
    if spec.effect == "deny" and req is not None:
        raise fail("a deny rule attaches no conditions; drop require:", "require")
    if spec.type == "audit" and (req is None or req.audit is None or spec.effect == "deny"):
        raise fail("an audit rule is effect allow or require with require.audit", "type")
    limits = ("limits", "rate_limit", "max_tokens", "max_bytes")
    if (
        spec.type == "resource_usage"
        and spec.effect != "deny"
        and (req is None or all(getattr(req, k) is None for k in limits))
    ):
        raise fail("a resource_usage rule sets limits, rate_limit, max_tokens or max_bytes", "type")
    if spec.type == "data_flow":
        if not spec.labels:
            raise fail("a data_flow rule names the data labels it governs (labels: [...])", "type")
    elif spec.labels or spec.destinations or spec.except_destinations:
        raise fail("labels and destinations belong to data_flow rules", "labels")
    if spec.reason and spec.effect != "deny":
        raise fail("only deny rules give a reason", "reason")


class _FilterError(ValueError):
    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.path = path


def _glob(pattern: str, *path: str | int) -> re.Pattern[str]:
    if not pattern:
        raise _FilterError("an empty pattern matches nothing", *path)
    return re.compile(fnmatch.translate(pattern))


def _leaf(text: str, fn: Predicate, record: bool) -> Predicate:
    if not record:
        return fn

    def recorded(facts: Facts) -> bool:
        value = bool(fn(facts))
        if facts.trace is not None:
            facts.trace.append(f"{text} -> {show(value)}")
        return value

    return recorded


def _matcher(spec: RuleSpec, *, record: bool) -> tuple[Predicate, bool]:
    """One closure for the rule's filters and condition, cheapest test first."""
    preds: list[Predicate] = []
    if spec.operations:
        ops = frozenset(spec.operations)
        preds.append(_leaf(f"operation in {sorted(ops)}", lambda f: f.operation in ops, record))
    if spec.resources:
        preds.append(_leaf(f"resource in {spec.resources}", _resource_filter(spec.resources), record))
    if spec.labels:
        labels = frozenset(spec.labels)
        preds.append(_leaf(f"labels any of {sorted(labels)}", lambda f: not labels.isdisjoint(f.labels), record))
    if spec.destinations or spec.except_destinations:
        preds.append(_leaf("destination filter", _destination_filter(spec), record))
    uses_time = False
    if spec.when:
        compiled = compile_expression(spec.when, record=record)
        preds.append(compiled.fn)
        uses_time = compiled.uses_time
    return _all(tuple(preds)), uses_time


def _all(preds: tuple[Predicate, ...]) -> Predicate:
    if not preds:
        return lambda _f: True
    if len(preds) == 1:
        return preds[0]

    def every(facts: Facts) -> bool:
        for pred in preds:  # noqa: SIM110 - a plain loop: all() with a generator is slower here
            if not pred(facts):
                return False
        return True

    return every


def _resource_filter(patterns: list[str]) -> Predicate:
    """``type``, ``type:glob`` or ``*``; the resource matches if any pattern does."""
    tests: list[tuple[str, Callable[[str], bool] | None]] = []
    for i, pattern in enumerate(patterns):
        kind, sep, glob = pattern.partition(":")
        if not kind:
            raise _FilterError(f"resource pattern {pattern!r} needs a type (e.g. tool:search/*)", "resources", i)
        tests.append((kind, _id_test(glob, "resources", i) if sep else None))
    if len(tests) == 1:  # the common case: one pattern, no loop
        ((kind, test),) = tests
        if kind == "*":
            return (lambda f: True) if test is None else (lambda f: test(f.resource_id))
        if test is None:
            return lambda f: f.resource_type == kind
        return lambda f: f.resource_type == kind and test(f.resource_id)

    def resource(facts: Facts) -> bool:
        rtype, rid = facts.resource_type, facts.resource_id
        for kind, test in tests:  # noqa: SIM110 - the hot path
            if (kind == "*" or kind == rtype) and (test is None or test(rid)):
                return True
        return False

    return resource


def _id_test(glob: str, *path: str | int) -> Callable[[str], bool]:
    """A test for one id glob: plain comparisons where the glob allows, a regex otherwise."""
    if not glob:
        raise _FilterError("an empty pattern matches nothing", *path)
    body = glob[:-1] if glob.endswith("*") else glob
    if not any(c in body for c in "*?[]"):
        if glob.endswith("*"):
            return lambda rid: rid.startswith(body)
        return lambda rid: rid == glob
    regex = _glob(glob, *path)
    return lambda rid: regex.fullmatch(rid) is not None


def _destination_filter(spec: RuleSpec) -> Predicate:
    destination = accessor(("resource", "destination")).get
    to = [_glob(p, "destinations", i) for i, p in enumerate(spec.destinations)]
    not_to = [_glob(p, "except_destinations", i) for i, p in enumerate(spec.except_destinations)]

    def flows(facts: Facts) -> bool:
        target = destination(facts)
        if to and not any(rx.fullmatch(target) for rx in to):
            return False
        return not any(rx.fullmatch(target) for rx in not_to)

    return flows


def _expr_location(loaded: Loaded, path: tuple[str | int, ...], exc: ExprError) -> Location:
    """Place an error inside the ``when:`` string: quoted scalars start one column later."""
    base = loaded.where(path)
    style = loaded.styles.get(path)
    if style in ("|", ">"):
        return Location(base.file, base.line + exc.line, 0)
    if exc.line > 1:
        return Location(base.file, base.line + exc.line - 1, exc.column)
    shift = 1 if style in ('"', "'") else 0
    return Location(base.file, base.line, base.column + shift + exc.column - 1)
