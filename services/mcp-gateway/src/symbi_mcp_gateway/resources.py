"""MCP resources through the gateway: listed per caller, read under policy, audited.

Reading is the ``tool_invoke`` enforcement point with operation ``read`` on the
resource ``resource`` ``<server>/<uri>``; an agent lists only what policy lets it
read. A read gets the same treatment as a call: a deny or an unsupported condition
refuses it, ``MaxBytes`` lowers the cap, rate limits are charged, and the decision
and the outcome (duration, bytes, SHA-256 of the contents) are audited.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from symbi_common.errors import InvalidArgumentError, PermissionDeniedError, SymbiError
from symbi_common.ids import new_id
from symbi_common.policy_client import PolicyDecider, Target, is_allowed, request
from symbi_common.ratelimit import RateLimiter
from symbi_common.settings import McpSettings
from symbi_mcp_gateway.audit import Recorder
from symbi_mcp_gateway.callers import Callers
from symbi_mcp_gateway.invocation import Call
from symbi_mcp_gateway.obligations import obligations_of
from symbi_mcp_gateway.registry import Registry
from symbi_mcp_gateway.results import shape_resource
from symbi_proto.v1 import audit_pb2, tools_pb2

T = tools_pb2


class ResourceReader:
    def __init__(
        self,
        settings: McpSettings,
        registry: Registry,
        policy: PolicyDecider,
        limiter: RateLimiter,
        recorder: Recorder,
        callers: Callers,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.policy = policy
        self.limiter = limiter
        self.recorder = recorder
        self.callers = callers

    async def list(self, req: T.ListResourcesRequest) -> T.ListResourcesResponse:
        out = T.ListResourcesResponse()
        found: list[T.ResourceDescriptor] = []
        for connection in self.registry.servers():
            if req.server and connection.name != req.server:
                continue
            if connection.state != T.MCP_SERVER_STATE_CONNECTED:
                out.unavailable_servers.append(connection.to_proto())
            found.extend(connection.resources)
        if (req.agent_id or req.requested_by) and found:
            who = await self.callers.principal(req.agent_id, req.requested_by, req.requester_roles)
            decisions = await self.policy.evaluate_batch(
                [request("tool_invoke", who, Target("resource", f"{r.server}/{r.uri}", tenant=who.tenant),
                         operation="read") for r in found]
            )  # fmt: skip
            found = [r for r, d in zip(found, decisions, strict=True) if is_allowed(d)]
        out.resources.extend(found)
        return out

    async def read(self, req: T.ReadResourceRequest) -> T.ReadResourceResponse:
        if not req.server or not req.uri:
            raise InvalidArgumentError("a resource read names a server and a uri")
        cap_s, cap_bytes = self.settings.call_timeout_s, self.settings.max_result_bytes
        asked_s = req.timeout.ToNanoseconds() / 1e9 if req.HasField("timeout") else 0.0
        timeout_s = min(asked_s, cap_s) if asked_s > 0 else cap_s
        max_bytes = min(req.max_bytes, cap_bytes) if req.max_bytes else cap_bytes
        # A read is recorded like a call: same events, same correlation.
        as_call = T.ToolCallRequest(agent_id=req.agent_id, server=req.server, tool=req.uri,
                                    requested_by=req.requested_by, correlation_id=req.correlation_id)  # fmt: skip
        call = Call(as_call, new_id(), req.correlation_id or new_id(), time.perf_counter(), {}, timeout_s, max_bytes)
        target = f"{req.server}/{req.uri}"
        try:
            call.who = await self.callers.principal(req.agent_id, req.requested_by, req.requester_roles)
            connection = self.registry.get(req.server)
            decision = await self.policy.evaluate(
                request("tool_invoke", call.who, Target("resource", target, tenant=call.who.tenant),
                        operation="read", correlation_id=call.correlation_id)
            )  # fmt: skip
            duties = obligations_of(decision)
            refusal = "" if is_allowed(decision) else decision.deny.reason or "denied by policy"
            if not refusal and (duties.unsupported or duties.tier):
                refusal = "policy attaches conditions a resource read cannot honour"
            details: dict[str, Any] = {"resource": target, "allowed": not refusal, "decision_id": decision.decision_id,
                                       "policy_id": decision.policy_id, "conditions": duties.describe()}  # fmt: skip
            outcome = audit_pb2.AUDIT_OUTCOME_SUCCESS if not refusal else audit_pb2.AUDIT_OUTCOME_DENIED
            await self.recorder.record("tool.decision", call, details, outcome, durable=duties.audit_required)
            if refusal:
                raise PermissionDeniedError(refusal)
            verdict = await self.limiter.acquire(duties.rate_limits)
            if not verdict.allowed:
                raise PermissionDeniedError(verdict.detail or "rate limited")
            cap = min(max_bytes, duties.max_bytes) if duties.max_bytes else max_bytes
            result = await connection.read_resource(req.uri, timeout_s)
        except SymbiError as exc:
            await self._outcome(call, target, {"success": False, "error": exc.code, "reason": exc.message})
            return T.ReadResourceResponse(error=exc.to_detail())
        contents, truncated = shape_resource(result, cap)
        digest = hashlib.sha256(b"".join(c.SerializeToString(deterministic=True) for c in contents)).hexdigest()
        size = sum(len(c.text.encode()) + len(c.blob) for c in contents)
        await self._outcome(call, target, {"success": True, "bytes": size, "truncated": truncated,
                                           "contents_sha256": digest})  # fmt: skip
        return T.ReadResourceResponse(contents=contents, truncated=truncated)

    async def _outcome(self, call: Call, target: str, details: dict[str, Any]) -> None:
        details = {"resource": target, "duration_ms": round((time.perf_counter() - call.started) * 1000, 3), **details}
        outcome = audit_pb2.AUDIT_OUTCOME_SUCCESS if details.get("success") else audit_pb2.AUDIT_OUTCOME_FAILURE
        try:
            await self.recorder.record("tool.outcome", call, details, outcome, durable=False)
        except SymbiError:
            return
