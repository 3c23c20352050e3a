"""Lifecycle test setup: a real policy service that lets ``tester`` create agents, a scheduler stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from symbi_testing.checks import register_policies
from symbi_testing.fixtures import RunService

from symbi_common import natsio, subjects
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.settings import Settings
from symbi_lifecycle.service import SPEC
from symbi_policy.service import SPEC as POLICY_SPEC
from symbi_proto.v1 import agent_pb2, common_pb2, scheduler_pb2

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "agents").iterdir())

CREATORS = """
id: test-creators
rules:
  - name: testers-create
    effect: allow
    actions: [agent_create]
    when: subject.id == "tester" and not (resource.id matches "forbidden*")
"""


@dataclass
class SchedulerDouble:
    """Answers ``symbi.scheduler.agent_tasks`` as told; records what it was asked.

    The real scheduler is tested against the lifecycle service in tests/integration;
    here the lifecycle's side of the contract is checked on its own.
    """

    stopped: bool = True
    detail: str = ""
    requests: list[scheduler_pb2.AgentTasksRequest] = field(default_factory=list)
    sub: Subscription | None = None

    def actions(self, agent_id: str) -> list[str]:
        return [
            scheduler_pb2.AgentTasksAction.Name(r.action).removeprefix("AGENT_TASKS_ACTION_").lower()
            for r in self.requests
            if r.agent_id == agent_id
        ]

    async def start(self, nc: Client) -> None:
        async def answer(msg: Msg) -> None:
            request = scheduler_pb2.AgentTasksRequest()
            request.ParseFromString(msg.data)
            self.requests.append(request)
            reply = scheduler_pb2.AgentTasksResponse(stopped=self.stopped, detail=self.detail)
            await nc.publish(msg.reply, reply.SerializeToString(), headers={natsio.STATUS_HEADER: natsio.STATUS_OK})

        self.sub = await nc.subscribe(subjects.scheduler("agent_tasks"), cb=answer)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None


@pytest_asyncio.fixture
async def policy_settings(run_service: RunService, settings: Settings, fresh_policy_log: None) -> Settings:
    runner = await run_service(POLICY_SPEC)
    addr = await register_policies(runner, CREATORS, "creators.yaml")
    return settings.with_overrides({"policy.addr": addr, "lifecycle.stop_timeout_s": 2.0})


@pytest_asyncio.fixture
async def scheduler(nc: Client) -> AsyncIterator[SchedulerDouble]:
    double = SchedulerDouble()
    await double.start(nc)
    yield double
    await double.stop()


@pytest_asyncio.fixture
async def lifecycle(
    run_service: RunService, policy_settings: Settings, nc: Client, fresh_redis: None, fresh_audit_streams: None
) -> LifecycleClient:
    await run_service(SPEC, policy_settings)
    return LifecycleClient(nc, actor="tester")


def source(path: Path) -> agent_pb2.DefinitionSource:
    from symbi_lifecycle.definitions import source_of

    return source_of(path)


def dsl(text: str, name: str = "agent.symbi") -> agent_pb2.DefinitionSource:
    return agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name=name)


def simple(name: str = "worker_bee", tenant: str = "t1", policy: str = "") -> agent_pb2.DefinitionSource:
    block = f"policy rules {{\n        {policy}\n    }}" if policy else ""
    return dsl(
        f"""
agent {name}(x: int) -> int {{
    capabilities = ["analyze_data"]
    tenant = "{tenant}"
    {block}
    with sandbox = "Tier1", timeout = 5s, memory = "64MB", cpu = 0.1 {{
        command = ["true"]
    }}
}}
"""
    )


def usage(cpu: float) -> common_pb2.TaskResourceUsage:
    out = common_pb2.TaskResourceUsage(cpu_seconds=cpu, memory_peak_bytes=int(cpu * 1000))
    out.wall_time.FromSeconds(1)
    return out
