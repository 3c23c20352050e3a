"""Sandbox orchestrator bootstrap: this node's worker, its runner, health and metrics.

The worker (``worker.py``) implements the scheduler's contract on
``symbi.sandbox.<node>.*`` and reports capacity on ``symbi.worker.<node>.capacity``.
With the Docker runner, sandbox sessions (``sessions.py``: long-lived sandboxed
processes with stdin and output over NATS, e.g. MCP stdio servers) are served too.
The ``docker`` runner (the default) runs Tier 1 under runc and Tier 2 under runsc;
a tier whose runtime the daemon lacks is reported unavailable in every capacity
report, so nothing is placed here that would run with weaker isolation. With the
``simulated`` runner (``[sandbox].runner``) tasks are not executed at all, and the
health check says so. On shutdown the worker drains: it stops its tasks and
reports them, so the scheduler places them elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket

from symbi_common import subjects
from symbi_common.errors import ConfigError, InvalidArgumentError
from symbi_common.health import DEGRADED, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_common.settings import Settings
from symbi_sandbox_orchestrator.docker_runner import DockerRunner
from symbi_sandbox_orchestrator.metrics import SandboxMetrics
from symbi_sandbox_orchestrator.runners import Runner, SimulatedRunner
from symbi_sandbox_orchestrator.runtimes import probe_docker
from symbi_sandbox_orchestrator.sessions import SessionManager
from symbi_sandbox_orchestrator.worker import Worker

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 5.0
RUNTIME_REFRESH_S = 10.0


def node_name(configured: str) -> str:
    """The node's subject token: the configured name (a Kubernetes node name, say) or the host name,
    with every character other than letters, digits, '-' and '_' replaced by '-'."""
    raw = configured or socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9_-]", "-", raw).strip("-")
    try:
        return subjects.token(name)
    except InvalidArgumentError:
        raise ConfigError(f"[sandbox].node {raw!r} gives no usable node name (letters, digits, '-', '_')") from None


def make_runner(kind: str, node: str, settings: Settings) -> Runner:
    if kind == "simulated":
        return SimulatedRunner(settings.sandbox.simulated_seconds)
    if kind == "docker":
        cfg = settings.sandbox
        return DockerRunner(node, settings.runtime.state_dir / "sandbox" / node, warm_size=cfg.warm_pool,
                            warm_images=frozenset(cfg.warm_images))  # fmt: skip
    if kind == "kubernetes":
        from symbi_sandbox_orchestrator.kubernetes_runner import ClusterApi, KubernetesRunner

        try:
            api = ClusterApi()
        except Exception as exc:  # no in-cluster config and no kubeconfig
            raise ConfigError(f"[sandbox].runner kubernetes: no cluster configuration ({exc})") from None
        return KubernetesRunner(api, settings.sandbox.namespace, settings.sandbox.gvisor_runtime_class)
    raise ConfigError(f"[sandbox].runner {kind!r} is not available")  # pragma: no cover - the settings forbid it


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.sandbox
    probe = await asyncio.to_thread(probe_docker)
    log.info("sandbox: %s", probe.describe())

    async def docker_check() -> CheckResult:
        current = await asyncio.to_thread(probe_docker)
        return (SERVING if len(current.tiers) == 2 else DEGRADED), current.describe()

    ctx.health.add_check("docker", docker_check)

    node = node_name(cfg.node)
    runner = make_runner(cfg.runner, node, ctx.settings)
    ctx.stack.push_async_callback(runner.close)
    await runner.refresh()
    removed = await runner.remove_leftovers()
    if removed:
        log.warning("removed %d sandboxes a previous instance on node %s left behind", removed, node)
    metrics = SandboxMetrics(ctx.metrics)
    worker = Worker(ctx.nc, node, runner, cfg, ctx.instance_id, on_error=ctx.health.record_error, metrics=metrics)
    await worker.register(ctx.serve)
    if isinstance(runner, DockerRunner):  # sessions (long-lived stdio processes) need the Docker runner
        sessions = SessionManager(ctx.nc, node, runner, cfg, on_change=worker.changed, metrics=metrics)
        worker.reservations = sessions.reserved
        await sessions.register(ctx.serve)
        ctx.stack.push_async_callback(sessions.drain, DRAIN_GRACE_S)
    ctx.tasks.spawn(worker.report_capacity(), name="capacity-reports")

    async def follow_the_engine() -> None:
        while True:
            await asyncio.sleep(RUNTIME_REFRESH_S)
            before = [t.available for t in runner.tiers()]
            await runner.refresh()
            if [t.available for t in runner.tiers()] != before:
                log.warning(
                    "sandbox tiers changed: %s", ", ".join(f"{t.runtime}={t.available}" for t in runner.tiers())
                )
                worker.changed()

    ctx.tasks.spawn(follow_the_engine(), name="sandbox-runtimes")
    ctx.stack.push_async_callback(worker.drain, DRAIN_GRACE_S)
    ctx.health.endpoints["node"] = worker.node

    SandboxMetrics.node_gauges(
        ctx.metrics,
        running=lambda: len(worker.running()),
        free_memory=lambda: worker.allocatable().memory_mb,
        free_cpu=lambda: worker.allocatable().cpu_cores,
    )

    def worker_check() -> CheckResult:
        free = worker.allocatable()
        summary = (
            f"node {worker.node}: {len(worker.running())} tasks running, "
            f"{free.memory_mb}/{worker.total.memory_mb} MiB and {free.cpu_cores:g}/{worker.total.cpu_cores:g} CPU free"
        )
        if runner.name == "simulated":
            return DEGRADED, f"{summary}; runner 'simulated': tasks are NOT executed"
        missing = [f"{t.runtime} ({t.reason})" for t in runner.tiers() if not t.available]
        if missing:
            return DEGRADED, f"{summary}; unavailable: {', '.join(missing)}"
        return SERVING, summary

    ctx.health.add_check("worker", worker_check)


SPEC = ServiceSpec(name="sandbox-orchestrator", summary="tasks in Docker/gVisor sandboxes", setup=setup)
