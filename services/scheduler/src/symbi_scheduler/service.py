"""Scheduler service bootstrap: one active replica (a Redis lease), its state restored from Redis.

Start-up: connect Redis, take the scheduling lease (a standby replica waits here,
not ready, until the active one's lease lapses), restore every task that was not
final, listen to workers' capacity and task reports, then answer
``symbi.scheduler.*``. A replica that cannot renew its lease stops scheduling at
once (so two never place the same task) and reports it in its health.
"""

from __future__ import annotations

import asyncio
import logging
import time

from symbi_common import redisio, subjects
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import SymbiError
from symbi_common.health import NOT_SERVING, SERVING, CheckResult
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_proto.v1 import task_pb2
from symbi_scheduler.api import SchedulerApi
from symbi_scheduler.core import CoreOptions, SchedulerCore
from symbi_scheduler.engine import Engine, SchedulerMetrics
from symbi_scheduler.store import TaskStore

log = logging.getLogger(__name__)

FORGET_AFTER_S = 300.0


async def _take_lease(store: TaskStore, holder: str, ttl_s: float) -> None:
    announced = False
    while not await store.acquire(holder, ttl_s):
        if not announced:
            log.info("standing by: %s holds the scheduling lease", await store.leader())
            announced = True
        await asyncio.sleep(ttl_s / 5)


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.scheduler
    redis = await redisio.attach(ctx)
    store = TaskStore(redis)
    await _take_lease(store, ctx.instance_id, cfg.lease_ttl_s)
    ctx.stack.push_async_callback(store.resign, ctx.instance_id)
    log.info("holding the scheduling lease (%s)", ctx.instance_id)

    core = SchedulerCore(
        CoreOptions(
            strategy=cfg.strategy,
            preemption=cfg.preemption,
            aging_interval_s=cfg.aging_interval_s,
            tenant_weights=dict(cfg.tenant_weights),
            worker_lost_after=cfg.worker_lost_after,
            timeout_grace_s=cfg.timeout_grace_s,
            max_attempts=cfg.max_attempts,
        )
    )
    lifecycle = LifecycleClient(ctx.nc, timeout_s=ctx.settings.nats.request_timeout_s, actor=ctx.instance_id)
    metrics = SchedulerMetrics(ctx.metrics)
    audit = AuditPublisher(ctx.js, ctx.instance_id, enabled=ctx.settings.security.audit_enabled)
    engine = Engine(
        ctx.nc, core, store, lifecycle, metrics, start_timeout_s=cfg.start_timeout_s, supervisor=ctx.tasks, audit=audit
    )
    restored = core.restore(await store.load_active(), engine.now())
    log.info("restored %d tasks (%d waiting)", restored, core.queue.waiting)

    policy = PolicyClient(
        ctx.settings.policy.addr,
        timeout_s=ctx.settings.policy.decision_timeout_s,
        cache_size=ctx.settings.policy.cache_size,
        enforce=ctx.settings.security.enforce_policies,
        actor=ctx.instance_id,
    )
    ctx.stack.push_async_callback(policy.close)

    async def keep_lease() -> None:
        while True:
            await asyncio.sleep(cfg.lease_ttl_s / 3)
            try:
                held = await store.renew(ctx.instance_id, cfg.lease_ttl_s)
            except Exception as exc:  # Redis unreachable: we cannot know we still hold it
                log.error("cannot renew the scheduling lease: %r", exc)
                held = False
            if not held and not engine.paused:
                log.error("lost the scheduling lease: this replica stops scheduling")
                engine.paused = True
                ctx.health.record_error("lease", "lost the scheduling lease")

    async def tidy() -> None:
        """Persist what the loop could not, and forget final tasks from memory (they stay in Redis)."""
        while True:
            await asyncio.sleep(FORGET_AFTER_S / 10)
            try:
                await engine.persist()
            except SymbiError as exc:
                log.warning("scheduler: %s", exc)
                continue
            old = [t for t, tr in core.tasks.items() if _final_for(tr.status, FORGET_AFTER_S)]
            for task_id in old:
                core.forget(task_id)

    ctx.tasks.spawn(keep_lease(), name="scheduler-lease")
    for subject, handler in (
        (subjects.WORKER_CAPACITY_ALL, engine.on_capacity),
        (subjects.WORKER_TASK_REPORTS_ALL, engine.on_task_report),
    ):
        ctx.subscriptions.append(await ctx.nc.subscribe(subject, cb=handler))
    ctx.tasks.spawn(engine.run(cfg.tick_interval_s), name="scheduler-loop")
    ctx.tasks.spawn(tidy(), name="scheduler-tidy")

    api = SchedulerApi(
        engine,
        lifecycle,
        policy,
        audit,
        default_tier=ctx.settings.runtime.default_sandbox_tier,
        max_queued=cfg.max_queued,
        grace_s=ctx.settings.lifecycle.grace_period_s,
    )
    await api.register(ctx)

    def scheduling_check() -> CheckResult:
        if engine.paused:
            return NOT_SERVING, "lost the scheduling lease"
        workers = [w for w in core.workers.values() if not w.lost]
        running = len(core.running)
        return SERVING, (
            f"{cfg.strategy}: {core.queue.waiting} waiting, {running} running, {len(workers)} workers "
            f"({len(core.workers) - len(workers)} lost)"
        )

    ctx.health.add_check("scheduling", scheduling_check)


def _final_for(status: task_pb2.TaskStatus, seconds: float) -> bool:
    if status.state not in (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED):
        return False
    return time.time() - status.finished_at.seconds > seconds


SPEC = ServiceSpec(name="scheduler", summary="priority queues, placement and preemption", setup=setup)
