"""What a tool-invocation decision obliges the gateway to do, and doing it to the arguments.

From ``AllowWithConditions``: ``RequireSandboxTier`` (run the server in at least that
tier), ``RedactFields`` (masked or removed from the arguments before they are sent),
``MaxBytes`` (the result cap, lowered), ``RateLimit`` (token buckets, all charged or
none), ``RequireAudit`` (the decision and outcome are published durably before the
call goes on or returns, with the inputs and outputs if asked). A condition the
gateway cannot honour makes the call fail closed: ``RequireHumanApproval`` (there is
no approval flow at the gateway), ``MaxTokens`` and ``LimitResources`` are not
applicable to a tool call and are refused rather than ignored.

Redaction paths are dotted (``arguments.user.email``) or JSON Pointers
(``/arguments/user/email``); the ``arguments`` prefix is optional.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from symbi_common.policy_client import is_allowed
from symbi_proto.v1 import policy_pb2


@dataclass
class Obligations:
    tier: int = 0
    redactions: list[tuple[list[str], str]] = field(default_factory=list)
    max_bytes: int = 0
    rate_limits: list[policy_pb2.RateLimit] = field(default_factory=list)
    audit_required: bool = False
    record_inputs: bool = False
    record_outputs: bool = False
    categories: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        out = []
        if self.tier:
            out.append(f"sandbox_tier={self.tier}")
        out += [f"redact={'.'.join(p)}" for p, _ in self.redactions]
        if self.max_bytes:
            out.append(f"max_bytes={self.max_bytes}")
        out += [f"rate_limit={r.key}" for r in self.rate_limits]
        if self.audit_required:
            out.append("audit")
        return out


def obligations_of(decision: policy_pb2.PolicyDecision) -> Obligations:
    out = Obligations()
    if not is_allowed(decision) or decision.WhichOneof("outcome") != "allow_with_conditions":
        return out
    for condition in decision.allow_with_conditions.conditions:
        kind = condition.WhichOneof("kind")
        if kind == "require_sandbox_tier":
            out.tier = max(out.tier, int(condition.require_sandbox_tier.minimum_tier))
        elif kind == "redact_fields":
            for path in condition.redact_fields.paths:
                out.redactions.append((split_path(path), condition.redact_fields.replacement))
        elif kind == "max_bytes":
            limit = int(condition.max_bytes.limit)
            out.max_bytes = min(out.max_bytes, limit) if out.max_bytes else limit
        elif kind == "rate_limit":
            out.rate_limits.append(condition.rate_limit)
        elif kind == "require_audit":
            out.audit_required = True
            out.record_inputs |= condition.require_audit.record_inputs
            out.record_outputs |= condition.require_audit.record_outputs
            if condition.require_audit.category:
                out.categories.append(condition.require_audit.category)
        elif kind is not None:
            out.unsupported.append(f"{kind} ({condition.rule or 'unnamed rule'})")
    return out


def split_path(path: str) -> list[str]:
    parts = list(path.split("/")) if path.startswith("/") else path.split(".")
    parts = [p.replace("~1", "/").replace("~0", "~") if path.startswith("/") else p for p in parts if p != ""]
    if parts and parts[0] == "arguments":
        parts = parts[1:]
    return parts


def redact(arguments: dict[str, Any], redactions: list[tuple[list[str], str]]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``arguments`` with each path replaced (or removed when the replacement is empty)."""
    if not redactions:
        return arguments, []
    out = copy.deepcopy(arguments)
    applied = []
    for path, replacement in redactions:
        if not path:
            continue
        parent: Any = out
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
            if parent is None:
                break
        last = path[-1]
        if isinstance(parent, dict) and last in parent:
            if replacement:
                parent[last] = replacement
            else:
                del parent[last]
            applied.append(".".join(path))
    return out, applied
