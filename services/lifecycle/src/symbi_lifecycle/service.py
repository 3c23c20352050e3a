"""Lifecycle service: agent records in Redis, their state machine, on ``symbi.lifecycle.*``.

Start-up: connect Redis, then recover (send every transition event still in the
outbox, finish initialisations a crash interrupted), then answer requests. Any
number of replicas may run (queue group ``lifecycle``); revisions in Redis keep
them from overwriting each other.

Requests (protobuf, see ``agent.proto``): ``create``, ``get``, ``list``,
``transition``, ``terminate``, ``history``, ``identity``, ``counts``.

It also runs the message bus router (``symbi_lifecycle.bus``): agents' envelopes,
their control requests and their bus credentials.
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import Message
from nats.aio.client import Client
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from symbi_common import natsio, redisio, subjects
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import SymbiError
from symbi_common.health import DEGRADED, SERVING, CheckResult
from symbi_common.policy_client import PolicyClient
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_lifecycle import states
from symbi_lifecycle.bus import service as bus
from symbi_lifecycle.controller import Controller, LifecycleOptions
from symbi_lifecycle.events import TransitionEvents
from symbi_lifecycle.store import AgentStore
from symbi_proto.v1 import agent_pb2, scheduler_pb2

log = logging.getLogger(__name__)

QUEUE = "lifecycle"


class SchedulerTasks:
    """``TaskControl`` over NATS: ``symbi.scheduler.agent_tasks``."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def agent_tasks(
        self, request: scheduler_pb2.AgentTasksRequest, timeout_s: float
    ) -> scheduler_pb2.AgentTasksResponse:
        return await natsio.request(
            self.nc,
            subjects.scheduler("agent_tasks"),
            request,
            scheduler_pb2.AgentTasksResponse,
            timeout=timeout_s,
        )


class LifecycleApi:
    def __init__(self, controller: Controller, metrics: LifecycleMetrics) -> None:
        self.controller = controller
        self.metrics = metrics

    async def register(self, ctx: ServiceContext) -> None:
        routes = [
            ("create", agent_pb2.CreateAgentRequest, self.create),
            ("get", agent_pb2.GetAgentRequest, self.get),
            ("list", agent_pb2.ListAgentsRequest, self.list),
            ("transition", agent_pb2.TransitionAgentRequest, self.transition),
            ("terminate", agent_pb2.TerminateAgentRequest, self.terminate),
            ("history", agent_pb2.AgentHistoryRequest, self.history),
            ("identity", agent_pb2.GetAgentIdentityRequest, self.identity),
            ("counts", agent_pb2.CountAgentsRequest, self.counts),
        ]
        for operation, request_type, handler in routes:
            await ctx.serve(subjects.lifecycle(operation), request_type, handler, queue=QUEUE, concurrent=True)  # type: ignore[arg-type]

    async def create(self, req: agent_pb2.CreateAgentRequest, _: natsio.RequestMeta) -> Message:
        response = await self.controller.create(req)
        self.metrics.created.labels("ok" if response.HasField("agent") else "invalid").inc()
        return response

    async def get(self, req: agent_pb2.GetAgentRequest, _: natsio.RequestMeta) -> Message:
        return agent_pb2.GetAgentResponse(agent=await self.controller.get(req.agent_id))

    async def list(self, req: agent_pb2.ListAgentsRequest, _: natsio.RequestMeta) -> Message:
        return await self.controller.list(req)

    async def transition(self, req: agent_pb2.TransitionAgentRequest, _: natsio.RequestMeta) -> Message:
        response = await self.controller.transition(req)
        if response.HasField("transition"):
            self.metrics.observe(response.transition)
        return response

    async def terminate(self, req: agent_pb2.TerminateAgentRequest, _: natsio.RequestMeta) -> Message:
        response = await self.controller.terminate(req)
        if response.HasField("transition"):
            self.metrics.observe(response.transition)
        return response

    async def history(self, req: agent_pb2.AgentHistoryRequest, _: natsio.RequestMeta) -> Message:
        return await self.controller.history(req)

    async def identity(self, req: agent_pb2.GetAgentIdentityRequest, _: natsio.RequestMeta) -> Message:
        return await self.controller.identity(req.agent_id)

    async def counts(self, _: agent_pb2.CountAgentsRequest, __: natsio.RequestMeta) -> Message:
        counts = await self.controller.state_counts()
        response = agent_pb2.CountAgentsResponse(total=sum(counts.values()))
        for state, count in sorted(counts.items()):
            response.counts.add(state=state, count=count)
        return response


class LifecycleMetrics:
    def __init__(self, ctx: ServiceContext) -> None:
        registry = ctx.metrics
        self.created = Counter("symbi_agents_created", "Create requests by outcome", ["outcome"], registry=registry)
        self.transitions = Counter(
            "symbi_agent_transitions", "State transitions made by this replica", ["from", "to"], registry=registry
        )
        self.agents = Gauge("symbi_agents", "Agents per state (all replicas)", ["state"], registry=registry)
        self.outbox = Gauge("symbi_lifecycle_outbox", "Transition events not yet published", registry=registry)

    def observe(self, transition: agent_pb2.StateTransition) -> None:
        self.transitions.labels(states.name(transition.from_state), states.name(transition.to_state)).inc()


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.lifecycle
    redis = await redisio.attach(ctx)
    store = AgentStore(redis)
    audit = AuditPublisher(ctx.js, ctx.instance_id, enabled=ctx.settings.security.audit_enabled)
    publisher = TransitionEvents(ctx.nc, audit, store)
    policy = PolicyClient(
        ctx.settings.policy.addr,
        timeout_s=ctx.settings.policy.decision_timeout_s,
        cache_size=0,
        enforce=ctx.settings.security.enforce_policies,
        actor=ctx.instance_id,
    )
    ctx.stack.push_async_callback(policy.close)
    options = LifecycleOptions(
        source=ctx.instance_id,
        extra_capabilities=cfg.extra_capabilities,
        stop_timeout_s=cfg.stop_timeout_s,
        default_grace_s=cfg.grace_period_s,
    )
    controller = Controller(store, publisher, policy, SchedulerTasks(ctx.nc), options)
    sent, resumed = await controller.recover()
    log.info("recovered %d agents (%d events re-sent, %d initialisations finished)", await store.count(), sent, resumed)
    metrics = LifecycleMetrics(ctx)

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(cfg.outbox_interval_s)
            try:
                await publisher.flush()
                await controller.retry_policy_cleanup()
                metrics.outbox.set(await store.outbox_size())
                for state, count in (await controller.state_counts()).items():
                    metrics.agents.labels(states.name(state)).set(count)
            except (SymbiError, RedisError, OSError) as exc:  # try again next round; health shows the backlog
                log.warning("lifecycle housekeeping: %s", exc)
                ctx.health.record_error("housekeeping", str(exc))

    ctx.tasks.spawn(housekeeping(), name="lifecycle-housekeeping")

    async def agents_check() -> CheckResult:
        counts = await controller.state_counts()
        summary = ", ".join(f"{states.name(s)} {n}" for s, n in sorted(counts.items()) if n) or "no agents"
        pending = await store.outbox_size()
        if pending:
            return DEGRADED, f"{summary}; {pending} transition events not yet published"
        return SERVING, summary

    ctx.health.add_check("agents", agents_check)
    await LifecycleApi(controller, metrics).register(ctx)
    # The bus asks policy on every message: its own client reuses decisions policies mark cacheable.
    bus_policy = PolicyClient(
        ctx.settings.policy.addr,
        timeout_s=ctx.settings.policy.decision_timeout_s,
        cache_size=ctx.settings.policy.cache_size,
        enforce=ctx.settings.security.enforce_policies,
        actor=ctx.instance_id,
    )
    ctx.stack.push_async_callback(bus_policy.close)
    await bus_policy.watch(ctx.nc)
    await bus.attach(ctx, store, redis, bus_policy)


SPEC = ServiceSpec(name="lifecycle", summary="agent records and their state machine", setup=setup)
