"""Wiring the router into the lifecycle service: streams, subscriptions, background work.

Subjects served (queue group ``bus-router``, so any number of replicas share them):
``symbi.bus.out.*`` (envelopes), ``symbi.bus.ctl.*.directory|topic_key|rejected``,
``symbi.lifecycle.bus_credentials``, ``symbi.bus.stats``; and ``symbi.agent.*.state``
(every replica: directory cache, inboxes of ended agents).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg

from symbi_common import natsio, subjects
from symbi_common.audit_events import AuditBuffer
from symbi_common.bus import inbox
from symbi_common.errors import SymbiError
from symbi_common.health import DEGRADED, SERVING, CheckResult
from symbi_common.natsauth import CredentialIssuer
from symbi_common.policy_client import PolicyDecider
from symbi_common.ratelimit import RedisRateLimiter
from symbi_common.service import ServiceContext
from symbi_lifecycle.bus.control import Control
from symbi_lifecycle.bus.credentials import CredentialDesk
from symbi_lifecycle.bus.deadletters import DeadLetters
from symbi_lifecycle.bus.directory import AgentDirectory
from symbi_lifecycle.bus.keys import TopicKeys, router_keys
from symbi_lifecycle.bus.metrics import RouterMetrics
from symbi_lifecycle.bus.router import Router, RouterDeps
from symbi_lifecycle.store import AgentStore
from symbi_proto.v1 import agent_pb2, message_pb2

log = logging.getLogger(__name__)
QUEUE = "bus-router"


async def attach(ctx: ServiceContext, store: AgentStore, redis: aioredis.Redis, policy: PolicyDecider) -> Router:
    cfg = ctx.settings.messaging
    issuer = CredentialIssuer.from_file(cfg.issuer_file) if cfg.issuer_file is not None else None
    verify = cfg.router_verify == "always" or issuer is None
    await inbox.ensure_stream(ctx.js, cfg)
    audit = AuditBuffer(ctx.js, enabled=ctx.settings.security.audit_enabled)
    ctx.tasks.spawn(audit.run(), name="bus-audit")
    ctx.stack.push_async_callback(audit.flush)
    metrics = RouterMetrics(ctx.metrics)
    directory = AgentDirectory(store)
    keys = await router_keys(redis)
    dead = DeadLetters(ctx.js, audit, metrics, ctx.instance_id)
    await dead.setup()
    ctx.tasks.spawn(dead.run(), name="bus-dead-letters")
    topics = TopicKeys(redis)
    router = Router(
        RouterDeps(
            nc=ctx.nc,
            js=ctx.js,
            redis=redis,
            directory=directory,
            topics=topics,
            policy=policy,
            limiter=RedisRateLimiter(redis),
            audit=audit,
            metrics=metrics,
            settings=cfg,
            instance_id=ctx.instance_id,
            verify_signatures=verify,
        )
    )
    control = Control(directory, keys, topics, policy, audit, metrics, dead, ctx.instance_id)
    desk = CredentialDesk(store, directory, policy, ctx.js, cfg, keys, issuer, audit, metrics, ctx.instance_id)

    async def route(data: bytes, meta: natsio.RequestMeta) -> Message:
        return await router.handle(meta.subject, data, meta.headers)

    async def stats(_: message_pb2.BusStatsRequest, __: natsio.RequestMeta) -> Message:
        return metrics.stats()

    await ctx.serve_raw(subjects.BUS_OUT_ALL, route, queue=QUEUE, concurrent=True)
    await ctx.serve(
        subjects.bus_ctl_all("directory"),
        agent_pb2.GetAgentIdentityRequest,
        control.lookup,
        queue=QUEUE,
        concurrent=True,
    )
    await ctx.serve(
        subjects.bus_ctl_all("topic_key"), message_pb2.TopicKeyRequest, control.topic_key, queue=QUEUE, concurrent=True
    )
    await ctx.serve(
        subjects.BUS_CREDENTIALS, message_pb2.BusCredentialsRequest, desk.issue, queue=QUEUE, concurrent=True
    )
    await ctx.serve(subjects.BUS_STATS, message_pb2.BusStatsRequest, stats)
    ctx.subscriptions.append(
        await ctx.nc.subscribe(subjects.bus_ctl_all("rejected"), queue=QUEUE, cb=control.on_rejected)
    )

    async def on_state(msg: Msg) -> None:  # every replica: its cache
        transition = _transition(msg.data)
        if transition is not None:
            directory.forget(transition.agent_id)

    async def on_ended(msg: Msg) -> None:  # one replica: the inbox
        transition = _transition(msg.data)
        if transition is not None and transition.to_state == agent_pb2.AGENT_STATE_TERMINATED:
            ctx.tasks.spawn(_retire(ctx, dead, topics, transition.agent_id), name=f"retire {transition.agent_id}")

    ctx.subscriptions.append(await ctx.nc.subscribe(subjects.AGENT_STATE_ALL, cb=on_state))
    ctx.subscriptions.append(await ctx.nc.subscribe(subjects.AGENT_STATE_ALL, queue=QUEUE, cb=on_ended))

    def check() -> CheckResult:
        mode = "broker authenticates agents" if issuer else "broker without agent authentication"
        if not audit.healthy:
            return DEGRADED, f"{mode}; audit buffer failing: {audit.last_error}"
        stats = metrics.stats()
        counts = f"{stats.sent} routed, {stats.rejected} refused, {stats.dead_letters} dead letters"
        return SERVING, f"{mode}; signatures checked {'on every hop' if verify else 'by receivers'}; {counts}"

    ctx.health.add_check("bus", check)
    log.info("bus router ready (%s)", "broker auth" if issuer else "no broker auth")
    return router


def _transition(data: bytes) -> agent_pb2.StateTransition | None:
    transition = agent_pb2.StateTransition()
    try:
        transition.ParseFromString(data)
    except DecodeError:
        return None
    return transition


async def _retire(ctx: ServiceContext, dead: DeadLetters, topics: TopicKeys, agent_id: str) -> None:
    """A terminated agent: the keys of its topics rotate, its consumer goes, what waited becomes dead letters."""
    try:
        rotated = await topics.revoke_grants(agent_id)
        moved = await dead.empty_inbox(agent_id, "recipient was terminated")
        await inbox.delete_consumer(ctx.js, agent_id)
    except SymbiError as exc:  # the broker or Redis cannot answer now: what waited stays until its max age
        log.warning("bus state of terminated agent %s not cleaned up: %s", agent_id, exc)
        return
    if rotated:
        log.info("terminated agent %s held keys of %s: rotated", agent_id, ", ".join(rotated))
    if moved:
        log.info("inbox of terminated agent %s: %d messages moved to dead letters", agent_id, moved)
