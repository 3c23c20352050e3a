"""Killing the lifecycle service and the scheduler (SIGKILL, no shutdown at all) loses no agent or queued task."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from symbi_testing.checks import eventually, health_of
from symbi_testing.fixtures import RunService

from symbi_common import embedded
from symbi_common.health import is_ready
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.settings import Settings
from symbi_policy.service import SPEC as POLICY
from symbi_proto.v1 import agent_pb2, task_pb2
from symbi_sandbox_orchestrator.service import SPEC as WORKER

from .conftest import POLICIES, agent_source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
CONFIG = """
[scheduler]
lease_ttl_s = 1.0
tick_interval_s = 0.05
"""


async def ready(nc: Client, service: str) -> bool:
    try:
        return is_ready(await health_of(nc, service))
    except Exception:  # not up yet
        return False


def spawn(name: str, tmp_path: Path, env: dict[str, str]) -> embedded.ManagedProcess:
    proc = embedded.ManagedProcess(
        name, [sys.executable, "-m", "symbi_cli", "serve", name], tmp_path / f"{name}.log", env=env
    )
    proc.start()
    return proc


@pytest.mark.usefixtures("fresh_redis", "fresh_policy_log", "fresh_audit_streams")
async def test_killed_services_lose_no_agent_or_task(
    run_service: RunService, settings: Settings, nc: Client, tmp_path: Path
) -> None:
    policy = await run_service(POLICY, settings)
    assert policy.ctx is not None
    addr = policy.ctx.health.endpoints["grpc"]
    client = PolicyClient(addr)
    try:
        await client.register(POLICIES, name="crash-tests.yaml")
    finally:
        await client.close()
    (tmp_path / "symbi.toml").write_text(CONFIG)
    env = {
        "PATH": "/usr/bin:/bin",
        "SYMBI_CONFIG_PATH": str(tmp_path / "symbi.toml"),
        "SYMBI_NATS_URL": settings.nats.url,
        "SYMBI_REDIS_URL": settings.redis.url,
        "SYMBI_POLICY_ADDR": addr,
        "SYMBI_STATE_DIR": str(tmp_path / "state"),
        "SYMBI_METRICS_PORT": "0",
    }
    procs = {name: spawn(name, tmp_path, env) for name in ("lifecycle", "scheduler")}
    try:
        for name in procs:
            await eventually(lambda n=name: ready(nc, n), timeout_s=60, what=f"{name} ready")  # type: ignore[misc]
        lifecycle = LifecycleClient(nc, actor="tester", timeout_s=10)
        scheduler = SchedulerClient(nc, actor="tester")
        agents = [(await lifecycle.create_from(agent_source(f"durable_{i}", seconds=0.1))).agent for i in range(5)]
        tasks = [(await scheduler.schedule(a.agent_id)).task_id for a in agents]

        for proc in procs.values():
            proc.signal(signal.SIGKILL)
            proc.wait_or_kill(10)
        procs = {name: spawn(name, tmp_path, env) for name in ("lifecycle", "scheduler")}
        for name in procs:
            await eventually(lambda n=name: ready(nc, n), timeout_s=60, what=f"{name} ready again")  # type: ignore[misc]

        for agent in agents:
            assert await lifecycle.get(agent.agent_id) == agent
        for task_id in tasks:
            assert (await scheduler.get_task(task_id)).state == task_pb2.TASK_STATE_QUEUED
        worker = settings.with_overrides(
            {"sandbox.node": "after-crash", "sandbox.report_interval_s": 0.2, "sandbox.runner": "simulated"}
        )
        await run_service(WORKER, worker)

        async def all_done() -> bool:
            states = [(await scheduler.get_task(t)).state for t in tasks]
            return all(s == task_pb2.TASK_STATE_SUCCEEDED for s in states)

        await eventually(all_done, timeout_s=30, what="every queued task runs after the crash")
        for agent in agents:
            assert (await lifecycle.get(agent.agent_id)).state == agent_pb2.AGENT_STATE_READY
    finally:
        for proc in procs.values():
            proc.stop(10)
