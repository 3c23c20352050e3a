"""One tool call, end to end: who asks, policy, obligations, rate limits, the call, audit.

1. The request is validated (names, a JSON object of arguments, timeout and size caps).
2. The caller becomes a policy subject: an agent (tenant and capabilities from its
   lifecycle record) or an operator (``requested_by`` with roles).
3. The tool must be offered (verified, or flagged in warn/off mode).
4. Policy decides at ``tool_invoke`` (operation ``call``, resource ``tool``
   ``<server>/<tool>``); a deny, or a condition that cannot be honoured, refuses the call.
5. The decision is audited (``tool.decision``), durably first when policy requires audit.
6. Rate limits (the decision's, plus configured defaults) are charged, all or none.
7. Arguments are checked against the input schema, then redacted as policy says.
8. The server is called in at least the tier policy requires, within the timeout.
9. The result is hashed, cut to the size cap, and the outcome audited (``tool.outcome``:
   duration, success, result SHA-256, bytes), linked to the decision by the correlation id.

Every refusal after step 1 is a ``ToolCallResult`` with ``error`` set (and audited);
only a malformed request raises.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SymbiError,
    UnavailableError,
)
from symbi_common.ids import new_id
from symbi_common.policy_client import PolicyDecider, Principal, Target, is_allowed, request
from symbi_common.ratelimit import RateLimiter, rate_limit
from symbi_common.settings import McpSettings
from symbi_mcp_gateway.audit import Recorder
from symbi_mcp_gateway.callers import Callers
from symbi_mcp_gateway.obligations import Obligations, obligations_of, redact
from symbi_mcp_gateway.registry import Registry
from symbi_mcp_gateway.results import shape
from symbi_proto.v1 import audit_pb2, policy_pb2, tools_pb2

log = logging.getLogger(__name__)

MAX_ARGUMENTS_BYTES = 1024 * 1024


@dataclass
class Call:
    """What is known about a call as it goes through the steps."""

    request: tools_pb2.ToolCallRequest
    call_id: str
    correlation_id: str
    started: float
    arguments: dict[str, Any]
    timeout_s: float
    max_bytes: int
    who: Principal | None = None
    decision: policy_pb2.PolicyDecision | None = None
    duties: Obligations | None = None

    @property
    def tool_id(self) -> str:
        return f"{self.request.server}/{self.request.tool}"


class Invoker:
    def __init__(
        self,
        settings: McpSettings,
        registry: Registry,
        policy: PolicyDecider,
        limiter: RateLimiter,
        recorder: Recorder,
        callers: Callers,
        metrics: CollectorRegistry,
        *,
        enforce: bool = True,
        mode: Callable[[], str] = lambda: "strict",
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.policy = policy
        self.limiter = limiter
        self.recorder = recorder
        self.callers = callers
        self.enforce = enforce
        self.mode = mode
        self.calls = Counter("symbi_mcp_tool_calls", "Tool calls by outcome", ["outcome"], registry=metrics)
        self.latency = Histogram(
            "symbi_mcp_tool_call_seconds",
            "Tool call time through the gateway",
            registry=metrics,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
        )

    def _parse(self, req: tools_pb2.ToolCallRequest) -> Call:
        if not req.server or not req.tool:
            raise InvalidArgumentError("a tool call names a server and a tool")
        if not req.agent_id and not req.requested_by:
            raise InvalidArgumentError("a tool call needs an agent_id or requested_by")
        if len(req.arguments_json) > MAX_ARGUMENTS_BYTES:
            raise InvalidArgumentError(f"arguments larger than {MAX_ARGUMENTS_BYTES} bytes")
        try:
            arguments = json.loads(req.arguments_json or "{}")
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"arguments_json is not JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise InvalidArgumentError("arguments_json must be a JSON object")
        cap_s, cap_bytes = self.settings.call_timeout_s, self.settings.max_result_bytes
        asked_s = req.timeout.ToNanoseconds() / 1e9 if req.HasField("timeout") else 0.0
        if asked_s < 0:
            raise InvalidArgumentError("timeout must be positive")
        timeout_s = min(asked_s, cap_s) if asked_s else cap_s
        max_bytes = min(req.max_result_bytes, cap_bytes) if req.max_result_bytes else cap_bytes
        return Call(req, req.call_id or new_id(), req.correlation_id or new_id(), time.perf_counter(), arguments,
                    timeout_s, max_bytes)  # fmt: skip

    async def call(self, req: tools_pb2.ToolCallRequest) -> tools_pb2.ToolCallResult:
        call = self._parse(req)
        try:
            result = await self._steps(call)
        except SymbiError as exc:
            result = await self._refused(call, exc)
        self.latency.observe(time.perf_counter() - call.started)
        return result

    async def _steps(self, call: Call) -> tools_pb2.ToolCallResult:
        req = call.request
        call.who = await self.callers.principal(req.agent_id, req.requested_by, req.requester_roles)
        entry = self.registry.tool(req.server, req.tool)
        if not entry.offered:
            raise FailedPreconditionError(
                f"{call.tool_id} is not offered: {entry.verdict.status_name} ({entry.detail})",
                metadata={"verification": entry.verdict.status_name},
            )
        call.decision = await self.policy.evaluate(
            request(
                "tool_invoke",
                call.who,
                Target("tool", call.tool_id, tenant=call.who.tenant),
                operation="call",
                action_attributes={
                    "bytes": call.max_bytes,
                    "arguments_bytes": len(req.arguments_json),
                    "verification": entry.verdict.status_name,
                },
                correlation_id=call.correlation_id,
            )
        )
        call.duties = duties = obligations_of(call.decision)
        allowed = is_allowed(call.decision) or not self.enforce
        refusal = "" if allowed else call.decision.deny.reason or "denied by policy"
        if allowed and duties.unsupported:
            refusal = f"policy attaches conditions the gateway cannot honour: {', '.join(duties.unsupported)}"
        await self._record_decision(call, refusal)
        if refusal:
            raise PermissionDeniedError(refusal, metadata={"decision_id": call.decision.decision_id})
        await self._charge(call, duties)
        entry.check_arguments(call.arguments)
        arguments, redacted = redact(call.arguments, duties.redactions)
        connection = await self.registry.connection_for(req.server, duties.tier)
        if connection is not self.registry.get(req.server):
            twin = connection.tools.get(req.tool)
            if twin is None or twin.verdict.descriptor_sha256 != entry.verdict.descriptor_sha256:
                raise FailedPreconditionError(f"{call.tool_id} in the sandboxed instance differs from the verified one")
        max_bytes = min(call.max_bytes, duties.max_bytes) if duties.max_bytes else call.max_bytes
        mcp_result = await connection.call_tool(req.tool, arguments, call.timeout_s)
        shaped = shape(mcp_result, max_bytes)
        out = tools_pb2.ToolCallResult(
            call_id=call.call_id,
            is_error=bool(mcp_result.is_error),
            content=shaped.content,
            structured_content_json=shaped.structured_json,
            result_sha256=shaped.sha256,
            truncated=shaped.truncated,
            decision=call.decision,
            correlation_id=call.correlation_id,
            sandbox_tier=connection.tier,  # type: ignore[arg-type]
        )
        out.duration.FromNanoseconds(int((time.perf_counter() - call.started) * 1e9))
        details = {"success": not out.is_error, "result_sha256": shaped.sha256.hex(), "result_bytes": shaped.size,
                   "truncated": shaped.truncated, "redacted": redacted, "sandbox_tier": connection.tier}  # fmt: skip
        if duties.record_outputs:
            details["result_preview"] = (shaped.structured_json or "".join(c.text for c in shaped.content))[:1024]
        await self._record_outcome(call, details, success=not out.is_error)
        self.calls.labels("tool_error" if out.is_error else "ok").inc()
        return out

    async def _charge(self, call: Call, duties: Obligations) -> None:
        limits = list(duties.rate_limits)
        subject = call.who.id if call.who is not None else "?"
        if self.settings.agent_calls_per_minute:
            limits.append(rate_limit(f"mcp:{subject}", self.settings.agent_calls_per_minute, 60.0))
        if self.settings.tool_calls_per_minute:
            limits.append(rate_limit(f"mcp:{subject}:tool:{call.tool_id}", self.settings.tool_calls_per_minute, 60.0))
        verdict = await self.limiter.acquire(limits)
        if verdict.allowed:
            return
        if verdict.unavailable:
            raise UnavailableError(f"rate limits cannot be checked: {verdict.detail}")
        raise ResourceExhaustedError(verdict.detail, metadata={"retry_after_s": f"{verdict.retry_after_s:g}",
                                                               "bucket": verdict.key})  # fmt: skip

    async def _record_decision(self, call: Call, refusal: str) -> None:
        decision = call.decision
        assert decision is not None
        assert call.duties is not None
        details: dict[str, Any] = {
            "call_id": call.call_id,
            "tool": call.tool_id,
            "allowed": not refusal,
            "decision_id": decision.decision_id,
            "policy_id": decision.policy_id,
            "matched_rule": decision.matched_rule,
            "conditions": call.duties.describe(),
        }
        if refusal:
            details["reason"] = refusal
        if call.duties.record_inputs:
            details["arguments"] = redact(call.arguments, call.duties.redactions)[0]
        if call.duties.categories:
            details["categories"] = call.duties.categories
        outcome = audit_pb2.AUDIT_OUTCOME_SUCCESS if not refusal else audit_pb2.AUDIT_OUTCOME_DENIED
        await self.recorder.record("tool.decision", call, details, outcome, durable=call.duties.audit_required)

    async def _record_outcome(self, call: Call, details: dict[str, Any], *, success: bool) -> None:
        details = {"call_id": call.call_id, "tool": call.tool_id,
                   "duration_ms": round((time.perf_counter() - call.started) * 1000, 3), **details}  # fmt: skip
        outcome = audit_pb2.AUDIT_OUTCOME_SUCCESS if success else audit_pb2.AUDIT_OUTCOME_FAILURE
        durable = call.duties.audit_required if call.duties is not None else False
        try:
            await self.recorder.record("tool.outcome", call, details, outcome, durable=durable)
        except SymbiError as exc:  # the call happened: say so loudly, the caller still gets its result
            log.error("outcome of tool call %s not audited: %s", call.call_id, exc)

    async def _refused(self, call: Call, error: SymbiError) -> tools_pb2.ToolCallResult:
        out = tools_pb2.ToolCallResult(
            call_id=call.call_id, is_error=True, error=error.to_detail(), correlation_id=call.correlation_id
        )
        if call.decision is not None:
            out.decision.CopyFrom(call.decision)
        out.duration.FromNanoseconds(int((time.perf_counter() - call.started) * 1e9))
        self.calls.labels(error.code).inc()
        if not isinstance(error, PermissionDeniedError) or call.decision is None:
            details = {"success": False, "error": error.code, "reason": error.message}
            await self._record_outcome(call, details, success=False)
        return out
