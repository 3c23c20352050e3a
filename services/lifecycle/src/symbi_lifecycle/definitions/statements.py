"""Inline policy statements: ``allow|deny|require|audit: ...`` lines, turned into policy rules.

::

    allow:   <points>[(<operations>)] [on "<type:glob>", ...] [if <condition>]
    deny:    <points>[(<operations>)] [on "<type:glob>", ...] [if <condition>] [because "<reason>"]
    require: <obligation> [for <points>[(<operations>)]] [on ...] [if <condition>]
    audit:   <points> [with inputs[, outputs]] [as "<category>"] [if <condition>]

``<points>`` are enforcement points joined by ``|`` (``tool_invoke|message_send``),
or ``all``. Obligations: ``sandbox Tier2``, ``approval "<group>" [within 10m]``,
``rate_limit 60 per 1m [burst 10] [key "<template>"]``, ``max_tokens 4000``,
``max_bytes "1MB"``, ``redact "<path>", ... [with "<replacement>"]``,
``limits(memory_mb = 512, cpu_cores = 1, execution_timeout = 30s)``. Conditions are
the policy language of ``docs/policy.md``.

Every rule made from an agent's statements also requires ``subject.id`` to be that
agent, so an agent's inline policy governs that agent only; and platform policies
still apply to it, deny overriding allow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from symbi_lifecycle.definitions.raw import Loc
from symbi_policy.expr import ExprError, compile_expression
from symbi_policy.facts import ACTIONS_BY_NAME

GRAMMAR = r"""
allow: points ops? resources? condition?
deny: points ops? resources? condition?
require: obligation target? resources? condition?
audit: points flags? category? condition?
points: "all" -> every
      | NAME ("|" NAME)*
ops: "(" NAME ("," NAME)* ")"
target: "for" points ops?
resources: "on" STRING ("," STRING)*
condition: "if" COND
flags: "with" NAME ("," NAME)*
category: "as" STRING
?obligation: "sandbox" NAME -> sandbox
           | "approval" STRING ("within" DURATION)? -> approval
           | "rate_limit" NUMBER "per" DURATION ("burst" NUMBER)? ("key" STRING)? -> rate_limit
           | "max_tokens" NUMBER -> max_tokens
           | "max_bytes" (NUMBER | STRING) -> max_bytes
           | "redact" STRING ("," STRING)* ("with" replacement)? -> redact
           | "limits" "(" limit ("," limit)* ")" -> limits
limit: NAME "=" (NUMBER | DURATION | STRING)
replacement: STRING
COND: /.+/
DURATION.2: /\d+(\.\d+)?(ms|s|m|h|d)(\d+(\.\d+)?(ms|s|m|h|d))*/
NUMBER: /\d+(\.\d+)?/
STRING: /"(?:[^"\\]|\\.)*"/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
%import common.WS
%ignore WS
"""
KINDS = ("allow", "deny", "require", "audit")
_BECAUSE = re.compile(r'\s+because\s+("(?:[^"\\]|\\.)*")\s*$')
LIMIT_NAMES = (
    "memory_mb", "cpu_cores", "disk_io_mbps", "network_io_mbps", "execution_timeout", "max_pids", "max_output_bytes",
)  # fmt: skip
PLACEHOLDER_AGENT = "00000000-0000-7000-8000-000000000000"


@functools.cache
def _parser(kind: str) -> Lark:
    return Lark(GRAMMAR, start=kind, parser="lalr", maybe_placeholders=False)


class StatementError(ValueError):
    def __init__(self, message: str, column: int = 1) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)
class Statement:
    kind: str
    text: str
    loc: Loc


def _unquote(token: Token) -> str:
    text = str(token)
    return bytes(text[1:-1], "utf-8").decode("unicode_escape") if "\\" in text else text[1:-1]


def parse_statement(kind: str, text: str, block: str, index: int) -> dict[str, Any]:
    """One statement as a policy rule (a dict in the policy document format)."""
    if kind not in KINDS:
        raise StatementError(f"unknown statement {kind!r} (one of {', '.join(KINDS)})")
    reason = ""
    body = text
    match = _BECAUSE.search(text) if kind == "deny" else None
    if match:
        reason = _unquote(Token("STRING", match.group(1)))
        body = text[: match.start()]
    try:
        tree = _parser(kind).parse(body)
    except UnexpectedInput as exc:
        raise StatementError(f"cannot read this {kind} statement: {_short(exc)}", exc.column or 1) from None
    rule: dict[str, Any] = {"name": f"{block}-{index}", "effect": "require" if kind in ("require", "audit") else kind}
    condition = ""
    for child in tree.children:
        if not isinstance(child, Tree):
            continue
        if child.data in ("points", "every"):
            rule["actions"] = _points(child, body)
        elif child.data == "ops":
            rule["operations"] = [str(t) for t in child.children]
        elif child.data == "target":
            rule["actions"] = _points(child.children[0], body)  # type: ignore[arg-type]
            if len(child.children) > 1:
                rule["operations"] = [str(t) for t in child.children[1].children]  # type: ignore[union-attr]
        elif child.data == "resources":
            rule["resources"] = [_unquote(t) for t in child.children]  # type: ignore[arg-type]
        elif child.data == "condition":
            condition = str(child.children[0]).strip()
            _check_condition(condition, body, child.children[0])  # type: ignore[arg-type]
        elif child.data == "flags":
            rule.setdefault("require", {}).setdefault("audit", {})
            for flag in child.children:
                if str(flag) not in ("inputs", "outputs"):
                    raise StatementError(f"audit records inputs or outputs, not {flag}", _col(flag))  # type: ignore[arg-type]
                rule["require"]["audit"][f"record_{flag}"] = True
        elif child.data == "category":
            rule.setdefault("require", {}).setdefault("audit", {})["category"] = _unquote(child.children[0])  # type: ignore[arg-type]
        else:
            rule["require"], rule["type"] = _obligation(child)
    rule.setdefault("actions", ["*"])
    if kind == "audit":
        rule["type"] = "audit"
        rule.setdefault("require", {}).setdefault("audit", {})
    if reason:
        rule["reason"] = reason
    rule["_condition"] = condition
    return rule


def _short(exc: UnexpectedInput) -> str:
    token = getattr(exc, "token", None)
    if token is not None and getattr(token, "type", "") == "$END":
        return "it ends too early"
    found = repr(str(token)) if token is not None else "this"
    return f"unexpected {found} at column {exc.column}"


def _col(token: Token) -> int:
    return int(token.column or 1)


def _points(node: Tree[Token], body: str) -> list[str]:
    if node.data == "every":
        return ["*"]
    names = [str(t) for t in node.children]
    for token in node.children:
        if str(token) not in ACTIONS_BY_NAME:
            raise StatementError(
                f"unknown enforcement point {str(token)!r} (one of {', '.join(ACTIONS_BY_NAME)} or all)",
                _col(token),  # type: ignore[arg-type]
            )
    return names


def _check_condition(condition: str, body: str, token: Token) -> None:
    try:
        compile_expression(condition)
    except ExprError as exc:
        leading = len(str(token)) - len(str(token).lstrip())
        raise StatementError(f"condition: {exc}", _col(token) + leading + exc.column - 1) from None


def _obligation(node: Tree[Token]) -> tuple[dict[str, Any], str]:
    values = [c for c in node.children if isinstance(c, Token)]
    kind = node.data
    if kind == "sandbox":
        tier = str(values[0])
        if tier not in ("Tier1", "Tier2"):
            raise StatementError(f"sandbox is Tier1 or Tier2, not {tier}", _col(values[0]))
        return {"sandbox_tier": tier}, "access_control"
    if kind == "approval":
        approval: dict[str, Any] = {"approver_group": _unquote(values[0])}
        if len(values) > 1:
            approval["timeout"] = str(values[1])
        return {"human_approval": approval}, "access_control"
    if kind == "rate_limit":
        limit: dict[str, Any] = {"limit": int(float(values[0])), "period": str(values[1])}
        rest = values[2:]
        for token in rest:
            if token.type == "NUMBER":
                limit["burst"] = int(float(token))
            else:
                limit["key"] = _unquote(token)
        limit.setdefault("key", "agent:{subject.id}")
        return {"rate_limit": limit}, "resource_usage"
    if kind == "max_tokens":
        return {"max_tokens": int(float(values[0]))}, "resource_usage"
    if kind == "max_bytes":
        raw = values[0]
        return {"max_bytes": int(float(raw)) if raw.type == "NUMBER" else _unquote(raw)}, "resource_usage"
    if kind == "redact":
        replaced = [c for c in node.children if isinstance(c, Tree) and c.data == "replacement"]
        replacement = _unquote(replaced[0].children[0]) if replaced else ""  # type: ignore[arg-type]
        return {"redact": {"paths": [_unquote(t) for t in values], "replacement": replacement}}, "access_control"
    limits: dict[str, Any] = {}
    for item in node.children:
        name, value = item.children  # type: ignore[union-attr]
        if str(name) not in LIMIT_NAMES:
            raise StatementError(f"unknown limit {name} (one of {', '.join(LIMIT_NAMES)})", _col(name))  # type: ignore[arg-type]
        limits[str(name)] = _limit_value(value)  # type: ignore[arg-type]
    return {"limits": limits}, "resource_usage"


def _limit_value(token: Token) -> Any:
    if token.type == "NUMBER":
        return float(token) if "." in str(token) else int(token)
    if token.type == "DURATION":
        return str(token)
    return _unquote(token)


def policy_document(
    agent_id: str, agent_name: str, blocks: Sequence[tuple[str, Sequence[dict[str, Any]]]]
) -> tuple[str, str]:
    """The policy id and YAML document of an agent's inline policies (rules scoped to the agent)."""
    policy_id = f"agent-{agent_id}"
    rules = []
    for _, statements in blocks:
        for statement in statements:
            rule = {k: v for k, v in statement.items() if not k.startswith("_")}
            scope = f'subject.id == "{agent_id}"'
            condition = statement.get("_condition", "")
            rule["when"] = f"{scope} and ({condition})" if condition else scope
            rules.append(rule)
    document = {"id": policy_id, "description": f"inline policies of agent {agent_name} ({agent_id})", "rules": rules}
    return policy_id, yaml.safe_dump(document, sort_keys=False)
