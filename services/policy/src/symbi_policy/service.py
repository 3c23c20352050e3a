"""Policy service bootstrap: the replicated policy set, decision auditing, gRPC.

Start-up order, each step finished before the next: catch up with the POLICY
stream (every policy ever registered), load the policy directory if configured,
then serve gRPC (``symbi.v1.PolicyService`` and ``grpc.health.v1``). The replica is
ready only then, so it never answers with a partial policy set.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from symbi_common.audit_events import AuditBuffer, AuditPublisher
from symbi_common.errors import ConfigError
from symbi_common.health import DEGRADED, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_common.telemetry import trace_servicer
from symbi_policy.decision_audit import DecisionRecorder
from symbi_policy.loader import DirectoryLoader
from symbi_policy.replication import PolicyStore
from symbi_policy.servicer import PolicyMetrics, PolicyServicer
from symbi_proto.v1 import policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

GRPC_GRACE_S = 5.0
POLICY_SERVICE_NAME = "symbi.v1.PolicyService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a full batch of maximal requests fits


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.policy
    store = PolicyStore(
        ctx.js,
        ctx.nc,
        instance_id=ctx.instance_id,
        metrics=ctx.metrics,
        max_request_bytes=cfg.max_request_bytes,
        timeout_s=ctx.settings.nats.request_timeout_s,
        on_error=ctx.health.record_error,
    )
    await store.start()
    ctx.stack.push_async_callback(store.stop)
    ctx.tasks.spawn(store.run_resync(cfg.resync_interval_s), name="policy-resync")

    buffer = AuditBuffer(ctx.js, enabled=ctx.settings.security.audit_enabled, capacity=cfg.audit_buffer)
    ctx.tasks.spawn(buffer.run(), name="decision-audit")
    ctx.stack.push_async_callback(buffer.flush, 5.0)

    if cfg.directory is not None:
        loader = DirectoryLoader(store, cfg.directory, on_error=ctx.health.record_error)
        result = await loader.scan()
        log.info(
            "policy directory %s: %d loaded, %d problems", cfg.directory, len(result.registered), len(result.errors)
        )
        ctx.tasks.spawn(loader.run(cfg.reload_interval_s), name="policy-directory")

    def policies_check() -> CheckResult:
        summary = f"policy set v{store.version}, {len(store.current.policies)} policies"
        if store.broken:
            return DEGRADED, f"{summary}; cannot compile: {', '.join(sorted(store.broken))}"
        return SERVING, summary

    def audit_check() -> CheckResult:
        state = f"{buffer.pending} pending, {buffer.published} published"
        if not buffer.healthy:
            return DEGRADED, f"decision audit failing ({buffer.last_error}); {state}"
        return SERVING, state

    ctx.health.add_check("policies", policies_check)
    ctx.health.add_check("decision-audit", audit_check)

    servicer = PolicyServicer(
        store,
        DecisionRecorder(buffer, ctx.instance_id),
        AuditPublisher(ctx.js, ctx.instance_id, enabled=ctx.settings.security.audit_enabled),
        PolicyMetrics(ctx.metrics),
        source=ctx.instance_id,
        max_batch=cfg.max_batch_size,
    )
    await _serve_grpc(ctx, servicer)


async def _serve_grpc(ctx: ServiceContext, servicer: PolicyServicer) -> None:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    server = grpc.aio.server(options=options)
    traced = trace_servicer(servicer, policy_pb2.DESCRIPTOR.services_by_name["PolicyService"])
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(traced, server)
    health_servicer = trace_servicer(health.aio.HealthServicer(), health_pb2.DESCRIPTOR.services_by_name["Health"])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host, port = ctx.settings.policy.host, ctx.settings.policy.port
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise ConfigError(f"policy gRPC cannot listen on {host}:{port}: {exc}") from None
    if bound == 0:
        raise ConfigError(f"policy gRPC cannot listen on {host}:{port} (in use?)")
    await server.start()
    ctx.stack.push_async_callback(server.stop, GRPC_GRACE_S)
    for name in ("", POLICY_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    ctx.stack.push_async_callback(health_servicer.enter_graceful_shutdown)
    ctx.health.endpoints["grpc"] = f"{host}:{bound}"
    ctx.health.add_check("grpc", lambda: (SERVING, f"listening on {host}:{bound}"))
    log.info("policy gRPC listening on %s:%d", host, bound)


SPEC = ServiceSpec(name="policy", summary="policy decisions over gRPC", setup=setup)
