"""Asking the policy service: one client for every enforcement point, failing closed.

``request(...)`` builds an ``EvaluateRequest`` from plain values (the enforcement
points are named ``agent_create``, ``message_send``, ``resource_allocate``,
``tool_invoke``, ``data_access`` and ``admin``); ``request_from_dict`` reads the same
shape from JSON/YAML (the CLI and dry-run files use it).

``PolicyClient.evaluate`` never raises: an unreachable, slow or broken policy
service yields ``Deny{kind: UNAVAILABLE}`` with the reason. Decisions are reused
only when the service said so (``cache_ttl`` > 0, which policies opt into and which
is never set for errors or time-dependent rules), only for a byte-identical request
(ignoring correlation id and time), and never across policy-set versions: a decision
from a newer version, or a ``symbi.policy.updated`` broadcast when ``watch`` is on,
empties the cache.

Services depend on the ``PolicyDecider`` protocol; tests and production both use
``PolicyClient`` against a real policy service.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from symbi_common import attributes, subjects, telemetry
from symbi_common.errors import InvalidArgumentError, PermissionDeniedError, UnavailableError, from_rpc_error
from symbi_proto.v1 import common_pb2, policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

ACTION_TYPES: dict[str, int] = {
    "agent_create": policy_pb2.ACTION_TYPE_AGENT_CREATE,
    "message_send": policy_pb2.ACTION_TYPE_MESSAGE_SEND,
    "resource_allocate": policy_pb2.ACTION_TYPE_RESOURCE_ALLOCATE,
    "tool_invoke": policy_pb2.ACTION_TYPE_TOOL_INVOKE,
    "data_access": policy_pb2.ACTION_TYPE_DATA_ACCESS,
    "admin": policy_pb2.ACTION_TYPE_ADMIN,
}
SUBJECT_KINDS: dict[str, int] = {
    "agent": policy_pb2.SUBJECT_KIND_AGENT,
    "user": policy_pb2.SUBJECT_KIND_USER,
    "service": policy_pb2.SUBJECT_KIND_SERVICE,
}
SENSITIVITIES: dict[str, int] = {
    "public": common_pb2.DATA_SENSITIVITY_PUBLIC,
    "internal": common_pb2.DATA_SENSITIVITY_INTERNAL,
    "confidential": common_pb2.DATA_SENSITIVITY_CONFIDENTIAL,
    "restricted": common_pb2.DATA_SENSITIVITY_RESTRICTED,
}
ACTOR_METADATA = "symbi-actor"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: ``kind`` is agent, user or service."""

    kind: str
    id: str
    tenant: str = ""
    capabilities: Sequence[str] = ()
    roles: Sequence[str] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """What is acted upon."""

    type: str
    id: str = ""
    tenant: str = ""
    owner: str = ""
    labels: Sequence[str] = ()
    sensitivity: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


def request(
    action: str,
    subject: Principal,
    resource: Target,
    *,
    operation: str = "",
    action_attributes: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    correlation_id: str = "",
) -> policy_pb2.EvaluateRequest:
    """An ``EvaluateRequest`` from plain values; unknown names are ``InvalidArgumentError``s."""
    if action not in ACTION_TYPES:
        raise InvalidArgumentError(f"unknown enforcement point {action!r} (one of {', '.join(ACTION_TYPES)})")
    if subject.kind not in SUBJECT_KINDS:
        raise InvalidArgumentError(f"unknown subject kind {subject.kind!r} (one of {', '.join(SUBJECT_KINDS)})")
    if resource.sensitivity and resource.sensitivity not in SENSITIVITIES:
        raise InvalidArgumentError(f"unknown sensitivity {resource.sensitivity!r} (one of {', '.join(SENSITIVITIES)})")
    out = policy_pb2.EvaluateRequest()
    out.action.type = ACTION_TYPES[action]  # type: ignore[assignment]
    out.action.operation = operation
    attributes.fill(out.action.attributes, action_attributes)
    who = out.context.subject
    who.kind = SUBJECT_KINDS[subject.kind]  # type: ignore[assignment]
    who.id, who.tenant = subject.id, subject.tenant
    who.capabilities.extend(attributes.strings(subject.capabilities, name="subject.capabilities"))
    who.roles.extend(attributes.strings(subject.roles, name="subject.roles"))
    attributes.fill(who.attributes, subject.attributes)
    what = out.context.resource
    what.type, what.id, what.tenant, what.owner = resource.type, resource.id, resource.tenant, resource.owner
    what.labels.extend(attributes.strings(resource.labels, name="resource.labels"))
    if resource.sensitivity:
        what.sensitivity = SENSITIVITIES[resource.sensitivity]  # type: ignore[assignment]
    attributes.fill(what.attributes, resource.attributes)
    attributes.fill(out.context.attributes, context)
    out.context.correlation_id = correlation_id
    return out


def request_from_dict(data: Mapping[str, Any]) -> policy_pb2.EvaluateRequest:
    """``{"action": ..., "operation": ..., "subject": {...}, "resource": {...}, "context": {...}}``."""
    known = {"action", "operation", "subject", "resource", "action_attributes", "context", "correlation_id"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown request keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        subject = Principal(**dict(data.get("subject") or {}))
        resource = Target(**dict(data.get("resource") or {"type": ""}))
    except TypeError as exc:
        raise InvalidArgumentError(f"bad subject or resource: {exc}") from None
    return request(
        str(data.get("action", "")),
        subject,
        resource,
        operation=str(data.get("operation", "")),
        action_attributes=data.get("action_attributes"),
        context=data.get("context"),
        correlation_id=str(data.get("correlation_id", "")),
    )


def unavailable(reason: str) -> policy_pb2.PolicyDecision:
    """The client's own fail-closed decision when no answer could be had."""
    decision = policy_pb2.PolicyDecision()
    decision.deny.kind = policy_pb2.DENY_KIND_UNAVAILABLE
    decision.deny.reason = reason
    decision.time.GetCurrentTime()
    return decision


def is_allowed(decision: policy_pb2.PolicyDecision) -> bool:
    return decision.WhichOneof("outcome") in ("allow", "allow_with_conditions")


def conditions(decision: policy_pb2.PolicyDecision) -> list[policy_pb2.Condition]:
    return list(decision.allow_with_conditions.conditions)


class PolicyDecider(Protocol):
    """What an enforcement point needs from the policy service."""

    async def evaluate(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision: ...

    async def evaluate_batch(
        self, requests: Sequence[policy_pb2.EvaluateRequest]
    ) -> list[policy_pb2.PolicyDecision]: ...


class DecisionCache:
    """Decisions the service marked reusable, per request, for one policy-set version."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.version = 0
        self.hits = 0
        self._entries: OrderedDict[bytes, tuple[float, policy_pb2.PolicyDecision]] = OrderedDict()

    @staticmethod
    def key(request: policy_pb2.EvaluateRequest) -> bytes:
        probe = policy_pb2.EvaluateRequest()
        probe.CopyFrom(request)
        probe.context.ClearField("correlation_id")
        probe.context.ClearField("time")
        return probe.SerializeToString(deterministic=True)

    def get(self, key: bytes) -> policy_pb2.PolicyDecision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if time.monotonic() >= expires or decision.policy_set_version != self.version:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return decision

    def observe(self, version: int) -> None:
        """A decision or broadcast from ``version``: drop everything decided under an older one."""
        if version > self.version:
            self._entries.clear()
            self.version = version

    def put(self, key: bytes, decision: policy_pb2.PolicyDecision) -> None:
        self.observe(decision.policy_set_version)
        ttl = decision.cache_ttl.ToNanoseconds() / 1e9
        if self.size <= 0 or ttl <= 0 or decision.policy_set_version != self.version:
            return
        self._entries[key] = (time.monotonic() + ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PolicyClient:
    """The gRPC client of ``symbi.v1.PolicyService`` (implements ``PolicyDecider``)."""

    def __init__(
        self,
        addr: str,
        *,
        timeout_s: float = 2.0,
        cache_size: int = 10_000,
        enforce: bool = True,
        actor: str = "",
    ) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.enforce = enforce
        self.actor = actor
        self.cache = DecisionCache(cache_size)
        # No client interceptor: the trace context goes into each call's metadata directly
        # (grpc.aio's interceptor machinery costs ~80 µs a call, a tenth of a decision's round trip).
        self._channel = grpc.aio.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.stub = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self._sub: Subscription | None = None

    def acting_as(self, actor: str) -> PolicyClient:
        """This client (the same channel, stub and cache) recording ``actor`` as who asks.

        For a gateway that manages policies on behalf of many callers; close only the original."""
        other = copy.copy(self)
        other.actor = actor
        return other

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the NATS connection may be closing already
                log.debug("policy update subscription: %r", exc)
            self._sub = None
        await self._channel.close()

    async def watch(self, nc: Client) -> None:
        """Empty the cache on every policy-set change broadcast (optional; versions also do it)."""

        async def on_update(msg: Msg) -> None:
            update = policy_pb2.PolicyUpdated()
            try:
                update.ParseFromString(msg.data)
            except DecodeError:
                self.cache.clear()
                return
            self.cache.observe(update.policy_set_version)

        self._sub = await nc.subscribe(subjects.POLICY_UPDATED, cb=on_update)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        traced = tuple(telemetry.inject().items())
        return (*traced, (ACTOR_METADATA, self.actor)) if self.actor else traced

    async def evaluate(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision:
        key = DecisionCache.key(request) if self.cache.size else b""
        if key:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        try:
            decision = await self.stub.Evaluate(request, timeout=self.timeout_s, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            return unavailable(_unreachable(exc, self.addr, self.timeout_s))
        except Exception as exc:  # anything at all: deny, never raise into the enforcement point
            return unavailable(f"policy service call failed: {exc!r}")
        if key:
            self.cache.put(key, decision)
        else:
            self.cache.observe(decision.policy_set_version)
        return decision

    async def evaluate_batch(self, requests: Sequence[policy_pb2.EvaluateRequest]) -> list[policy_pb2.PolicyDecision]:
        batch = policy_pb2.EvaluateBatchRequest(requests=list(requests))
        try:
            reply = await self.stub.EvaluateBatch(batch, timeout=self.timeout_s, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            reason = _unreachable(exc, self.addr, self.timeout_s)
            return [unavailable(reason) for _ in requests]
        except Exception as exc:
            return [unavailable(f"policy service call failed: {exc!r}") for _ in requests]
        if len(reply.decisions) != len(requests):
            return [unavailable("policy service answered a batch with the wrong number of decisions") for _ in requests]
        self.cache.observe(reply.policy_set_version)
        return list(reply.decisions)

    async def check(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision:
        """Evaluate and raise on a deny (unless enforcement is off): ``PermissionDeniedError``, or
        ``UnavailableError`` when the policy service could not decide (still refused; worth retrying)."""
        decision = await self.evaluate(request)
        if not is_allowed(decision):
            if self.enforce:
                if decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE:
                    raise UnavailableError(decision.deny.reason, metadata=_deny_metadata(decision))
                raise PermissionDeniedError(decision.deny.reason, metadata=_deny_metadata(decision))
            log.warning("policy denies (%s) but [security].enforce_policies is off", decision.deny.reason)
        return decision

    # Management (these raise typed errors) ---------------------------------------

    async def _call(self, method: Any, message: Any) -> Any:
        try:
            return await method(message, timeout=self.timeout_s * 5, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def register(
        self, text: str, *, name: str = "api", fmt: str = "yaml", expected_version: int = 0, validate_only: bool = False
    ) -> policy_pb2.RegisterPolicyResponse:
        source = policy_pb2.PolicySource(text=text, name=name, format=fmt)
        message = policy_pb2.RegisterPolicyRequest(
            source=source, expected_version=expected_version, validate_only=validate_only
        )
        reply: policy_pb2.RegisterPolicyResponse = await self._call(self.stub.RegisterPolicy, message)
        self.cache.observe(reply.policy_set_version)
        return reply

    async def delete(self, policy_id: str, *, reason: str = "", expected_version: int = 0) -> int:
        message = policy_pb2.DeletePolicyRequest(policy_id=policy_id, reason=reason, expected_version=expected_version)
        reply: policy_pb2.DeletePolicyResponse = await self._call(self.stub.DeletePolicy, message)
        self.cache.observe(reply.policy_set_version)
        return reply.policy_set_version

    async def get(self, policy_id: str, version: int = 0) -> policy_pb2.Policy:
        reply = await self._call(self.stub.GetPolicy, policy_pb2.GetPolicyRequest(policy_id=policy_id, version=version))
        return reply.policy  # type: ignore[no-any-return]

    async def list(self, *, policy_type: int = 0, page_size: int = 1000) -> list[policy_pb2.Policy]:
        policies: list[policy_pb2.Policy] = []
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=page_size, page_token=token)
            message = policy_pb2.ListPoliciesRequest(page=page, type=policy_type)  # type: ignore[arg-type]
            reply = await self._call(self.stub.ListPolicies, message)
            policies.extend(reply.policies)
            token = reply.page.next_page_token
            if not token:
                return policies

    async def explain(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.ExplainResponse:
        reply: policy_pb2.ExplainResponse = await self._call(
            self.stub.Explain, policy_pb2.ExplainRequest(request=request)
        )
        return reply

    async def dry_run(
        self,
        requests: Iterable[policy_pb2.EvaluateRequest],
        candidates: Iterable[policy_pb2.PolicySource] = (),
        *,
        remove: Iterable[str] = (),
        replace_current: bool = False,
    ) -> policy_pb2.DryRunResponse:
        message = policy_pb2.DryRunRequest(
            requests=list(requests),
            candidates=list(candidates),
            remove_policy_ids=list(remove),
            replace_current=replace_current,
        )
        reply: policy_pb2.DryRunResponse = await self._call(self.stub.DryRun, message)
        return reply


def _unreachable(exc: grpc.aio.AioRpcError, addr: str, timeout_s: float) -> str:
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"policy service at {addr} gave no decision within {timeout_s:.2f}s"
    return f"policy service at {addr} unavailable: {exc.code().name}: {exc.details()}"


def _deny_metadata(decision: policy_pb2.PolicyDecision) -> dict[str, str]:
    return {
        "deny_kind": policy_pb2.DenyKind.Name(decision.deny.kind),
        "policy_id": decision.policy_id,
        "matched_rule": decision.matched_rule,
        "decision_id": decision.decision_id,
    }
