"""Policy service bootstrap: the gRPC server with standard health checking.

Policy evaluation itself (``symbi.v1.PolicyService``) is added by the policy engine;
until a servicer is registered, calls answer UNIMPLEMENTED, which every client maps
to a deny (fail closed).
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from symbi_common.errors import ConfigError
from symbi_common.health import SERVING
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_common.telemetry import TracingServerInterceptor

log = logging.getLogger(__name__)

GRPC_GRACE_S = 5.0
POLICY_SERVICE_NAME = "symbi.v1.PolicyService"


async def setup(ctx: ServiceContext) -> None:
    server = grpc.aio.server(interceptors=[TracingServerInterceptor()])
    health_servicer = health.aio.HealthServicer()
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
