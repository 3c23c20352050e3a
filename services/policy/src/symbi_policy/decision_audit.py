"""Every decision becomes an audit event (``policy.decision``), built off the hot path.

The event carries who asked for what at which enforcement point, the outcome and its
reason, the deciding policy, version and rule, the policy-set version and the
conditions attached. Its ``correlation_id`` is the request's correlation id (or the
decision id when the caller gave none), so the enforcing service's outcome event
links to it. Its timestamp is the decision's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace

from symbi_common.audit_events import AuditBuffer, build_event
from symbi_policy.facts import ACTION_NAMES, SENSITIVITY_NAMES, SUBJECT_KINDS
from symbi_proto.v1 import audit_pb2, policy_pb2

EVENT_TYPE = "policy.decision"
AUDIT_UNAVAILABLE = "audit trail unavailable: the decision cannot be recorded, so it is denied"


def decision_details(
    request: policy_pb2.EvaluateRequest, decision: policy_pb2.PolicyDecision, mode: str
) -> dict[str, Any]:
    """What the event records, flat, empty values left out (the event's own fields carry the agent,
    tenant, correlation id, data labels and outcome)."""
    subject, resource = request.context.subject, request.context.resource
    details: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "outcome": decision.WhichOneof("outcome") or "deny",
        "enforcement_point": ACTION_NAMES.get(request.action.type, str(request.action.type)),
        "subject_kind": SUBJECT_KINDS.get(subject.kind, ""),
        "subject_id": subject.id,
        "resource_type": resource.type,
        "resource_id": resource.id,
        "policy_set_version": decision.policy_set_version,
    }
    optional = {
        "mode": "" if mode == "evaluate" else mode,
        "operation": request.action.operation,
        "resource_tenant": resource.tenant,
        "resource_owner": resource.owner,
        "sensitivity": SENSITIVITY_NAMES.get(resource.sensitivity, ""),
        "policy_id": decision.policy_id,
        "matched_rule": decision.matched_rule,
    }
    details.update((key, value) for key, value in optional.items() if value)
    if decision.policy_id:
        details["policy_version"] = decision.policy_version
    if decision.HasField("deny"):
        details["reason"] = decision.deny.reason
        details["deny_kind"] = policy_pb2.DenyKind.Name(decision.deny.kind)
    if decision.HasField("allow_with_conditions"):
        details["conditions"] = [
            MessageToDict(condition, preserving_proto_field_name=True)
            for condition in decision.allow_with_conditions.conditions
        ]
    return details


def decision_event(
    source: str,
    request: policy_pb2.EvaluateRequest,
    decision: policy_pb2.PolicyDecision,
    *,
    mode: str = "evaluate",
    trace_id: str = "",
) -> audit_pb2.AuditEvent:
    subject, resource = request.context.subject, request.context.resource
    event = build_event(
        EVENT_TYPE,
        source=source,
        agent_id=subject.id if subject.kind == policy_pb2.SUBJECT_KIND_AGENT else "",
        details=decision_details(request, decision, mode),
        outcome=audit_pb2.AUDIT_OUTCOME_DENIED if decision.HasField("deny") else audit_pb2.AUDIT_OUTCOME_SUCCESS,
        correlation_id=request.context.correlation_id or decision.decision_id,
        tenant=subject.tenant,
        data_labels=list(resource.labels),
    )
    event.timestamp.CopyFrom(decision.time)
    if trace_id:
        event.trace_id = trace_id
    return event


class DecisionRecorder:
    """Queues one audit event per decision; a decision that cannot be queued becomes a deny."""

    def __init__(self, buffer: AuditBuffer, source: str) -> None:
        self.buffer = buffer
        self.source = source

    def record(
        self, request: policy_pb2.EvaluateRequest, decision: policy_pb2.PolicyDecision, mode: str = "evaluate"
    ) -> policy_pb2.PolicyDecision:
        span = trace.get_current_span().get_span_context()
        trace_id = f"{span.trace_id:032x}" if span.is_valid else ""
        build: Callable[[], audit_pb2.AuditEvent] = lambda: decision_event(  # noqa: E731
            self.source, request, decision, mode=mode, trace_id=trace_id
        )
        if self.buffer.offer(build):
            return decision
        refused = policy_pb2.PolicyDecision()
        refused.CopyFrom(decision)
        refused.deny.kind = policy_pb2.DENY_KIND_ERROR
        refused.deny.reason = AUDIT_UNAVAILABLE
        for name in ("cache_ttl", "policy_id", "policy_version", "matched_rule"):
            refused.ClearField(name)
        return refused
