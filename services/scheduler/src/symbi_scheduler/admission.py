"""From a schedule request to a ``Task``: limits, tier, and the ``resource_allocate`` decision.

Limits: the agent definition's, overridden field by field by the request's, then
defaults for what is still unset (``DEFAULTS``). Tier: the definition's, else
``[runtime].default_sandbox_tier``. Then the policy service decides
``resource_allocate`` for the task (subject: the agent; resource: ``task:<id>``;
action attributes: the limits, ``network``, ``tier``); a deny rejects the request,
and the decision's conditions can only tighten the task: limits are capped.
Finally the risk assessment (``symbi_common.risk``) picks the tier: the highest of
what the score implies, what policy requires and what the definition asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from symbi_common import risk
from symbi_common.errors import InvalidArgumentError
from symbi_common.ids import new_id
from symbi_common.policy_client import Principal, Target, conditions, request
from symbi_proto.v1 import agent_pb2, common_pb2, policy_pb2, sandbox_pb2, scheduler_pb2, task_pb2

DEFAULT_MEMORY_MB = 256
DEFAULT_CPU_CORES = 0.5
DEFAULT_TIMEOUT_S = 300
TIERS = {"Tier1": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "Tier2": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}
SIMPLE = ("memory_mb", "cpu_cores", "disk_io_mbps", "network_io_mbps", "max_pids", "max_output_bytes")


class Decider(Protocol):
    async def check(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision: ...


def limits_for(definition: agent_pb2.AgentDefinition, override: common_pb2.ResourceLimits) -> common_pb2.ResourceLimits:
    limits = common_pb2.ResourceLimits()
    limits.CopyFrom(definition.options.limits)
    for name in SIMPLE:
        value = getattr(override, name)
        if value < 0:
            raise InvalidArgumentError(f"limits.{name} must not be negative")
        if value:
            setattr(limits, name, value)
    if override.HasField("execution_timeout"):
        if override.execution_timeout.ToNanoseconds() <= 0:
            raise InvalidArgumentError("limits.execution_timeout must be positive")
        limits.execution_timeout.CopyFrom(override.execution_timeout)
    if not limits.memory_mb:
        limits.memory_mb = DEFAULT_MEMORY_MB
    if not limits.cpu_cores:
        limits.cpu_cores = DEFAULT_CPU_CORES
    if limits.execution_timeout.ToNanoseconds() <= 0:
        limits.execution_timeout.FromSeconds(DEFAULT_TIMEOUT_S)
    return limits


def allocation_request(task: task_pb2.Task, record: agent_pb2.AgentRecord) -> policy_pb2.EvaluateRequest:
    limits = task.limits
    definition = record.definition
    return request(
        "resource_allocate",
        Principal("agent", record.agent_id, tenant=definition.tenant, capabilities=list(definition.capabilities)),
        Target("task", task.task_id, tenant=definition.tenant, owner=record.agent_id),
        operation="schedule",
        action_attributes={
            "memory_mb": int(limits.memory_mb),
            "cpu_cores": float(limits.cpu_cores),
            "disk_io_mbps": int(limits.disk_io_mbps),
            "network_io_mbps": int(limits.network_io_mbps),
            "execution_timeout_s": limits.execution_timeout.ToNanoseconds() / 1e9,
            "network": task.network_access,
            "tier": sandbox_pb2.SandboxTier.Name(task.tier).removeprefix("SANDBOX_TIER_").lower(),
            "priority": task_pb2.TaskPriority.Name(task.priority).removeprefix("TASK_PRIORITY_").lower(),
        },
        correlation_id=task.task_id,
    )


def apply_conditions(task: task_pb2.Task, found: Sequence[policy_pb2.Condition]) -> int:
    """Tighten ``task`` by a decision's conditions (caps lower limits); returns the tier policy requires."""
    minimum = 0
    for condition in found:
        kind = condition.WhichOneof("kind")
        if kind == "require_sandbox_tier":
            minimum = max(minimum, condition.require_sandbox_tier.minimum_tier)
        elif kind == "limit_resources":
            cap = condition.limit_resources.limits
            for name in SIMPLE:
                limit = getattr(cap, name)
                if limit and (not getattr(task.limits, name) or getattr(task.limits, name) > limit):
                    setattr(task.limits, name, limit)
            if cap.execution_timeout.ToNanoseconds() > 0 and (
                task.limits.execution_timeout.ToNanoseconds() > cap.execution_timeout.ToNanoseconds()
            ):
                task.limits.execution_timeout.CopyFrom(cap.execution_timeout)
    return minimum


def risk_factors(definition: agent_pb2.AgentDefinition) -> sandbox_pb2.RiskFactors:
    options = definition.options
    return sandbox_pb2.RiskFactors(
        data_sensitivity=options.data_sensitivity,
        code_trust=options.code_trust,
        network_access=options.network_access,
        filesystem_access=options.filesystem_access,
        external_integrations=list(options.inputs),
    )


async def admit(
    req: scheduler_pb2.ScheduleAgentRequest,
    record: agent_pb2.AgentRecord,
    policy: Decider,
    *,
    default_tier: str,
) -> task_pb2.Task:
    """The task to queue for ``record``, decided by policy (``PermissionDeniedError`` on a deny)."""
    definition = record.definition
    options = definition.options
    task = task_pb2.Task(
        task_id=new_id(),
        agent_id=record.agent_id,
        tenant=definition.tenant,
        priority=req.priority or options.priority or task_pb2.TASK_PRIORITY_NORMAL,
        limits=limits_for(definition, req.limits),
        spec=definition.task,
        tier=options.sandbox_tier or TIERS[default_tier],
        network_access=options.network_access,
        arguments=req.arguments,
        preemptible=req.priority != task_pb2.TASK_PRIORITY_CRITICAL,
        attempt=1,
        labels=dict(definition.metadata.labels),
    )
    task.submitted_at.GetCurrentTime()
    if req.tenant and req.tenant != definition.tenant:
        raise InvalidArgumentError(f"the agent belongs to tenant {definition.tenant!r}, not {req.tenant!r}")
    decision = await policy.check(allocation_request(task, record))
    task.decision_id = decision.decision_id
    minimum = apply_conditions(task, conditions(decision))
    task.risk.CopyFrom(risk.assess(risk_factors(definition), policy_minimum=minimum, requested=task.tier))
    task.tier = task.risk.chosen_tier
    return task
