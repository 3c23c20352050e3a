"""The agent core for integration tests: policy, lifecycle, scheduler and workers, all real, in-process.

``agent_stack`` starts the policy service (with ``POLICIES``), the lifecycle
service and the scheduler on the session's NATS and Redis; ``stack.worker(...)``
adds sandbox-orchestrator workers: the simulated runner by default (tasks run for
the time their agent's ``symbi.simulate/*`` labels say, and execute nothing), or
``runner="docker"`` for real containers.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import eventually, register_policies
from symbi_testing.fixtures import RunService

from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_lifecycle.service import SPEC as LIFECYCLE
from symbi_policy.service import SPEC as POLICY
from symbi_proto.v1 import agent_pb2, task_pb2
from symbi_sandbox_orchestrator.service import SPEC as WORKER
from symbi_scheduler.service import SPEC as SCHEDULER

T = task_pb2
FINAL = (T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED, T.TASK_STATE_REJECTED)
POLICIES = """
id: agent-core-tests
rules:
  - name: testers-create
    effect: allow
    actions: [agent_create]
    when: subject.id == "tester"
  - name: task-budget
    type: resource_usage
    effect: allow
    actions: [resource_allocate]
    when: subject.tenant != "capped"
    require:
      limits: {memory_mb: 8192, cpu_cores: 8, execution_timeout: 10m}
  - name: capped-tenant
    type: resource_usage
    effect: allow
    actions: [resource_allocate]
    when: subject.tenant == "capped"
    require:
      on_exceed: cap
      limits: {memory_mb: 128, execution_timeout: 20s}
      sandbox_tier: Tier2
  - name: blocked-tenant
    effect: deny
    actions: [resource_allocate]
    when: subject.tenant == "blocked"
    reason: tenant blocked may not run tasks
"""


def agent_source(
    name: str,
    *,
    tenant: str = "t1",
    seconds: float = 0.2,
    memory: int = 100,
    cpu: float = 0.5,
    priority: str = "normal",
    timeout: str = "30s",
    tier: str = "Tier1",
    labels: dict[str, str] | None = None,
) -> agent_pb2.DefinitionSource:
    every = {"symbi.simulate/seconds": str(seconds), **(labels or {})}
    label_text = ", ".join(f'"{k}" = "{v}"' for k, v in every.items())
    text = textwrap.dedent(
        f"""
        metadata {{
            name = "{name}"
            version = "1.0.0"
            labels = {{ {label_text} }}
        }}
        agent {name}() {{
            capabilities = ["analyze_data"]
            tenant = "{tenant}"
            with sandbox = "{tier}", timeout = {timeout}, memory = "{memory}MB", cpu = {cpu}, priority = "{priority}" {{
                command = ["python3", "-c", "print(1)"]
            }}
        }}
        """
    )
    return agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name=f"{name}.symbi")


@dataclass
class AgentStack:
    run_service: RunService
    settings: Settings
    nc: Client
    lifecycle: LifecycleClient
    scheduler: SchedulerClient
    runners: dict[str, ServiceRunner] = field(default_factory=dict)
    workers: dict[str, ServiceRunner] = field(default_factory=dict)

    async def start(self, name: str, custom: Settings | None = None) -> ServiceRunner:
        spec = {"lifecycle": LIFECYCLE, "scheduler": SCHEDULER}[name]
        runner = await self.run_service(spec, custom or self.settings)
        self.runners[name] = runner
        return runner

    async def worker(
        self, node: str, *, memory: int = 4096, cpu: float = 4, slots: int = 16, **extra: Any
    ) -> ServiceRunner:
        overrides = {
            "sandbox.runner": "simulated",
            "sandbox.node": node,
            "sandbox.memory_mb": memory,
            "sandbox.cpu_cores": cpu,
            "sandbox.task_slots": slots,
            "sandbox.report_interval_s": 0.2,
            **{f"sandbox.{k}": v for k, v in extra.items()},
        }
        runner = await self.run_service(WORKER, self.settings.with_overrides(overrides))
        self.workers[node] = runner
        await eventually(lambda: self._knows(node), timeout_s=10, what=f"the scheduler knows worker {node}")
        return runner

    async def _knows(self, node: str) -> bool:
        status = await self.scheduler.status()
        return any(w.capacity.node == node and not w.lost for w in status.workers)

    async def agent(self, name: str, **kw: Any) -> agent_pb2.AgentRecord:
        reply = await self.lifecycle.create_from(agent_source(name, **kw))
        assert not reply.issues, reply.issues
        return reply.agent

    async def run(self, agent_id: str, **kw: Any) -> str:
        return (await self.scheduler.schedule(agent_id, **kw)).task_id

    async def final(self, task_id: str, timeout_s: float = 15) -> task_pb2.TaskStatus:
        async def done() -> bool:
            return (await self.scheduler.get_task(task_id)).state in FINAL

        await eventually(done, timeout_s=timeout_s, what=f"task {task_id} ends")
        return await self.scheduler.get_task(task_id)

    async def state(self, task_id: str, *states: int, timeout_s: float = 15) -> task_pb2.TaskStatus:
        async def reached() -> bool:
            return (await self.scheduler.get_task(task_id)).state in states

        await eventually(reached, timeout_s=timeout_s, what=f"task {task_id} reaches {states}")
        return await self.scheduler.get_task(task_id)

    async def agent_state(self, agent_id: str, state: int, timeout_s: float = 15) -> agent_pb2.AgentRecord:
        async def reached() -> bool:
            return (await self.lifecycle.get(agent_id)).state == state

        await eventually(reached, timeout_s=timeout_s, what=f"agent {agent_id} reaches state {state}")
        return await self.lifecycle.get(agent_id)


def core_settings(settings: Settings, **scheduler: Any) -> Settings:
    overrides: dict[str, Any] = {
        "scheduler.tick_interval_s": 0.05,
        "scheduler.lease_ttl_s": 2.0,
        "scheduler.timeout_grace_s": 0.5,
        "lifecycle.stop_timeout_s": 10.0,
        "lifecycle.grace_period_s": 1.0,
        "lifecycle.outbox_interval_s": 0.5,
    }
    overrides |= {f"scheduler.{k}": v for k, v in scheduler.items()}
    return settings.with_overrides(overrides)


@pytest_asyncio.fixture
async def agent_stack(
    request: Any,
    run_service: RunService,
    settings: Settings,
    nc: Client,
    fresh_redis: None,
    fresh_policy_log: None,
    fresh_audit_streams: None,
) -> AsyncIterator[AgentStack]:
    """The agent core; ``@pytest.mark.scheduler(strategy=..., aging_interval_s=...)`` configures the scheduler."""
    marker = request.node.get_closest_marker("scheduler")
    options = dict(marker.kwargs) if marker else {}
    policy = await run_service(POLICY, settings)
    addr = await register_policies(policy, POLICIES, "agent-core-tests.yaml")
    wired = core_settings(settings.with_overrides({"policy.addr": addr}), **options)
    stack = AgentStack(
        run_service, wired, nc, LifecycleClient(nc, actor="tester", timeout_s=10), SchedulerClient(nc, actor="tester")
    )
    stack.runners["policy"] = policy
    await stack.start("lifecycle")
    await stack.start("scheduler")
    yield stack
