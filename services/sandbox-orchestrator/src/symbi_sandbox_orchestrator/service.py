"""Sandbox orchestrator bootstrap: NATS, health, metrics, and the node's sandbox tiers.

Without Docker (or without ``runsc``) the orchestrator still starts and says plainly
which tiers are unavailable; running tasks is added by the sandbox work.
"""

from __future__ import annotations

import asyncio
import logging

from symbi_common.health import DEGRADED, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_sandbox_orchestrator.runtimes import probe_docker

log = logging.getLogger(__name__)


async def setup(ctx: ServiceContext) -> None:
    probe = await asyncio.to_thread(probe_docker)
    log.info("sandbox: %s", probe.describe())

    async def docker_check() -> CheckResult:
        current = await asyncio.to_thread(probe_docker)
        return (SERVING if len(current.tiers) == 2 else DEGRADED), current.describe()

    ctx.health.add_check("docker", docker_check)


SPEC = ServiceSpec(name="sandbox-orchestrator", summary="tasks in Docker/gVisor sandboxes", setup=setup)
