"""The gRPC ``symbi.v1.PolicyService``: decisions, policy management, explain, dry-run.

Decisions never fail as calls: whatever goes wrong becomes a ``Deny`` with the
reason. Management calls fail with a gRPC status and a ``symbi.v1.ErrorDetail`` in
the trailing metadata (``errors.grpc_trailers``); an invalid document fails with
``INVALID_ARGUMENT`` whose detail metadata names ``file``, ``line`` and ``column``.
The caller of a management call is named by the ``symbi-actor`` metadata entry
(the API gateway sets it to the authenticated key); it is recorded as ``created_by``
and in the audit event of the change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_common.audit_events import AuditSink, build_event
from symbi_common.errors import InvalidArgumentError, SymbiError, UnavailableError, grpc_trailers
from symbi_policy.compiler import CompiledPolicy, compile_sources
from symbi_policy.decision_audit import DecisionRecorder
from symbi_policy.document import DocumentError, Issue
from symbi_policy.engine import PolicySet, Verdict, outcome_name
from symbi_policy.facts import ACTION_NAMES
from symbi_policy.replication import PolicyStore
from symbi_proto.v1 import common_pb2, policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

ACTOR_METADATA = "symbi-actor"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "symbi_policy_decisions", "Policy decisions", ["enforcement_point", "outcome"], registry=registry
        )
        self.latency = Histogram(
            "symbi_policy_decision_seconds",
            "Time to decide, per call",
            ["method"],
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
        )
        self._children: dict[tuple[int, str], Any] = {}
        self.evaluate_latency = self.latency.labels("evaluate")
        self.batch_latency = self.latency.labels("batch")

    def count(self, action: int, outcome: str) -> None:
        child = self._children.get((action, outcome))
        if child is None:
            child = self._children[(action, outcome)] = self.decisions.labels(
                ACTION_NAMES.get(action, "unknown"), outcome
            )
        child.inc()


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        store: PolicyStore,
        recorder: DecisionRecorder,
        audit: AuditSink,
        metrics: PolicyMetrics,
        *,
        source: str,
        max_batch: int = 10_000,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.audit = audit
        self.metrics = metrics
        self.source = source
        self.max_batch = max_batch

    # Decisions ------------------------------------------------------------------

    def _decide(self, policies: PolicySet, request: policy_pb2.EvaluateRequest, mode: str) -> policy_pb2.PolicyDecision:
        decision = policies.to_decision(policies.decide(request))
        decision = self.recorder.record(request, decision, mode)
        self.metrics.count(request.action.type, outcome_name(decision))
        return decision

    async def Evaluate(
        self, request: policy_pb2.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.PolicyDecision:
        started = time.perf_counter()
        decision = self._decide(self.store.current, request, "evaluate")
        self.metrics.evaluate_latency.observe(time.perf_counter() - started)
        return decision

    async def EvaluateBatch(
        self, request: policy_pb2.EvaluateBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.EvaluateBatchResponse:
        started = time.perf_counter()
        policies = self.store.current  # one version for the whole batch
        response = policy_pb2.EvaluateBatchResponse(policy_set_version=policies.version)
        if len(request.requests) > self.max_batch:
            reason = f"batch of {len(request.requests)} requests exceeds the limit of {self.max_batch}"
            refused = Verdict("deny", policy_pb2.DENY_KIND_INVALID_REQUEST, reason)
            for item in request.requests:
                response.decisions.append(self.recorder.record(item, policies.to_decision(refused), "batch"))
        else:
            response.decisions.extend(self._decide(policies, item, "batch") for item in request.requests)
        self.metrics.batch_latency.observe(time.perf_counter() - started)
        return response

    async def Explain(
        self, request: policy_pb2.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ExplainResponse:
        policies = self.store.current
        decision, trace = policies.explain(request.request)
        decision = self.recorder.record(request.request, decision, "explain")
        return policy_pb2.ExplainResponse(decision=decision, trace=trace)

    async def DryRun(
        self, request: policy_pb2.DryRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DryRunResponse:
        current = self.store.current
        response = policy_pb2.DryRunResponse(policy_set_version=current.version)
        candidates: list[CompiledPolicy] = []
        for source in request.candidates:
            try:
                candidates.extend(compile_sources(source.text, source.name or "candidate", source.format or "yaml"))
            except DocumentError as exc:
                response.issues.extend(_issue_messages(exc.issues))
        if response.issues:
            return response
        base = PolicySet(0, max_request_bytes=current.max_request_bytes) if request.replace_current else current
        candidate = base.replace(current.version, put=candidates, remove=request.remove_policy_ids)
        for index, item in enumerate(request.requests):
            now_decision = current.to_decision(current.decide(item), decision_id="-")
            new_decision = candidate.to_decision(candidate.decide(item), decision_id="-")
            changed = _outcome_key(now_decision) != _outcome_key(new_decision)
            response.results.append(
                policy_pb2.DryRunResult(index=index, current=now_decision, candidate=new_decision, changed=changed)
            )
            response.changed_count += int(changed)
        return response

    # Management -----------------------------------------------------------------

    async def RegisterPolicy(
        self, request: policy_pb2.RegisterPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.RegisterPolicyResponse:
        source = request.source
        try:
            compiled = compile_sources(source.text, source.name or "api", source.format or "yaml")
        except DocumentError as exc:
            if request.validate_only:
                return policy_pb2.RegisterPolicyResponse(
                    policy_set_version=self.store.version, issues=_issue_messages(exc.issues)
                )
            await _abort(context, _document_error(exc))
        if len(compiled) != 1:
            await _abort(context, InvalidArgumentError(f"one policy per call; the source holds {len(compiled)}"))
        policy = compiled[0]
        warnings = _issue_messages(policy.warnings)
        if request.validate_only:
            return policy_pb2.RegisterPolicyResponse(
                policy=policy.policy, policy_set_version=self.store.version, issues=warnings
            )
        actor = _actor(context)
        try:
            change = await self.store.register(policy, expected_version=request.expected_version, created_by=actor)
        except SymbiError as exc:
            await _abort(context, exc)
        if change.unchanged:
            warnings.append(
                common_pb2.ValidationIssue(
                    severity=common_pb2.ISSUE_SEVERITY_INFO,
                    code="unchanged",
                    message=f"identical to version {change.policy.version if change.policy else '?'}; nothing changed",
                )
            )
        elif change.policy is not None:
            await self._audit_change("policy.registered", change.policy, change.policy_set_version, actor, "")
        return policy_pb2.RegisterPolicyResponse(
            policy=change.policy, policy_set_version=change.policy_set_version, issues=warnings
        )

    async def DeletePolicy(
        self, request: policy_pb2.DeletePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DeletePolicyResponse:
        actor = _actor(context)
        try:
            change = await self.store.delete(request.policy_id, expected_version=request.expected_version)
        except SymbiError as exc:
            await _abort(context, exc)
        if change.policy is not None:
            await self._audit_change("policy.deleted", change.policy, change.policy_set_version, actor, request.reason)
        return policy_pb2.DeletePolicyResponse(policy_set_version=change.policy_set_version)

    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.ListPoliciesResponse:
        current = self.store.current
        size = min(request.page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        matching = sorted(
            (p.policy for p in current.policies.values() if not request.type or request.type in p.policy.types),
            key=lambda policy: policy.id,
        )
        after = request.page.page_token
        page = [policy for policy in matching if policy.id > after][:size]
        response = policy_pb2.ListPoliciesResponse(policies=page, policy_set_version=current.version)
        response.page.total_size = len(matching)
        if page and page[-1].id != matching[-1].id:
            response.page.next_page_token = page[-1].id
        return response

    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.GetPolicyResponse:
        try:
            return policy_pb2.GetPolicyResponse(policy=self.store.get(request.policy_id, request.version))
        except SymbiError as exc:
            await _abort(context, exc)

    async def _audit_change(
        self, event_type: str, policy: policy_pb2.Policy, set_version: int, actor: str, reason: str
    ) -> None:
        details = {
            "policy_id": policy.id,
            "policy_version": policy.version,
            "policy_set_version": set_version,
            "source_sha256": policy.source_sha256.hex(),
            "types": [policy_pb2.PolicyType.Name(t) for t in policy.types],
            "actor": actor,
            "reason": reason,
        }
        event = build_event(
            event_type, source=self.source, details=details, correlation_id=f"{policy.id}@{set_version}"
        )
        try:
            await self.audit.emit(event)
        except UnavailableError as exc:  # the change is stored in the POLICY stream either way
            log.error("policy change %s@%d stored but its audit event was not: %s", policy.id, set_version, exc)


def _actor(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value:
            return value[:200]
    return f"grpc:{context.peer()}"


def _outcome_key(decision: policy_pb2.PolicyDecision) -> bytes:
    """What a dry-run compares: the outcome and its conditions (not ids, times or rule names)."""
    kind = decision.WhichOneof("outcome") or "deny"
    if kind == "allow_with_conditions":
        bodies = sorted(
            getattr(c, str(c.WhichOneof("kind"))).SerializeToString(deterministic=True)
            for c in decision.allow_with_conditions.conditions
        )
        return kind.encode() + b"".join(bodies)
    return kind.encode()


def _issue_messages(issues: Sequence[Issue]) -> list[common_pb2.ValidationIssue]:
    return [
        common_pb2.ValidationIssue(
            severity=common_pb2.ISSUE_SEVERITY_WARNING if issue.warning else common_pb2.ISSUE_SEVERITY_ERROR,
            code=issue.code,
            message=issue.message,
            location=common_pb2.SourceLocation(
                file=issue.location.file, line=issue.location.line, column=issue.location.column
            ),
        )
        for issue in issues
    ]


def _document_error(exc: DocumentError) -> InvalidArgumentError:
    first = exc.issues[0]
    metadata = {"file": first.location.file, "line": str(first.location.line), "column": str(first.location.column)}
    return InvalidArgumentError(str(exc), metadata=metadata)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: SymbiError) -> NoReturn:
    await context.abort(err.grpc_code, err.message, trailing_metadata=grpc_trailers(err))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
