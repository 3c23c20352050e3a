"""Every mutating call is decided by policy first, at the ``admin`` enforcement point.

The subject is the API key's principal (kind ``user`` or ``service``, its name, roles
and tenant; ``key_id`` and ``scopes`` as attributes), the action ``admin`` with the
call's operation (``agents.create``, ``policies.delete``, ``tools.call``, ...), the
resource what it acts upon. The guard fails closed: a deny is 403, a policy service
that cannot decide (``DENY_KIND_UNAVAILABLE``) is 503, and in both cases nothing has
been changed. Rate limits that the decision attaches are applied too. What was decided
is kept on the request for its audit record.
"""

from __future__ import annotations

import logging

from fastapi import Request

from symbi_api.keys import ApiKey
from symbi_common.errors import PermissionDeniedError, ResourceExhaustedError, UnavailableError
from symbi_common.policy_client import PolicyDecider, Principal, Target, is_allowed, request
from symbi_common.ratelimit import RateLimiter, limits_of
from symbi_proto.v1 import policy_pb2

log = logging.getLogger(__name__)


def principal_of(key: ApiKey) -> Principal:
    return Principal(
        key.kind,
        key.name,
        tenant=key.tenant,
        roles=list(key.roles),
        attributes={"key_id": key.key_id, "scopes": list(key.scopes)},
    )


class Guard:
    def __init__(self, policy: PolicyDecider, limiter: RateLimiter, *, enforce: bool = True) -> None:
        self.policy = policy
        self.limiter = limiter
        self.enforce = enforce

    async def admit(self, http: Request, caller: ApiKey, operation: str, resource: Target) -> policy_pb2.PolicyDecision:
        """Ask policy whether ``caller`` may do ``operation`` on ``resource``; raise unless allowed."""
        request_id = str(getattr(http.state, "request_id", ""))
        asked = request("admin", principal_of(caller), resource, operation=operation, correlation_id=request_id)
        decision = await self.policy.evaluate(asked)
        allowed = is_allowed(decision)
        http.state.admission = {
            "operation": operation,
            "resource": f"{resource.type}:{resource.id}" if resource.id else resource.type,
            "allowed": allowed,
            "decision_id": decision.decision_id,
            "policy_id": decision.policy_id,
            "matched_rule": decision.matched_rule,
        }
        if not allowed:
            kind = policy_pb2.DenyKind.Name(decision.deny.kind)
            metadata = {
                "deny_kind": kind,
                "policy_id": decision.policy_id,
                "matched_rule": decision.matched_rule,
                "decision_id": decision.decision_id,
                "operation": operation,
            }
            reason = decision.deny.reason or "denied by policy"
            if decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE:
                raise UnavailableError(f"policy could not decide ({reason}); nothing was changed", metadata=metadata)
            if self.enforce:
                raise PermissionDeniedError(f"{operation}: {reason}", metadata=metadata)
            log.warning("policy denies %s (%s) but [security].enforce_policies is off", operation, reason)
        limits = limits_of(decision)
        if limits:
            result = await self.limiter.acquire(limits)
            if not result.allowed:
                if result.unavailable:
                    raise UnavailableError(f"{result.detail}; nothing was changed")
                raise ResourceExhaustedError(result.detail, metadata={"retry_after_s": f"{result.retry_after_s:g}"})
        return decision
