"""MCP gateway bootstrap: servers, verification, policy, rate limits and audit, served over NATS.

The gateway connects to every configured MCP server (and, with discovery, to those in
the registry files and announcements), lists and SchemaPin-verifies their tools, and
answers ``symbi.tools.*`` (``handlers.py``). Health: ``verification`` (the mode; ``off``
shows as degraded), ``servers`` (degraded while any server is not connected, with
why), ``audit`` (the audit buffer), plus NATS and Redis.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from symbi_common import redisio
from symbi_common.audit_events import AuditBuffer, AuditPublisher
from symbi_common.errors import InvalidArgumentError
from symbi_common.health import DEGRADED, NOT_SERVING, SERVING, CheckResult
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.ratelimit import RedisRateLimiter
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_common.settings import McpServerConfig
from symbi_mcp_gateway import signatures
from symbi_mcp_gateway.audit import Recorder
from symbi_mcp_gateway.callers import Callers
from symbi_mcp_gateway.connection import Deps
from symbi_mcp_gateway.discovery import Announcements, watch_registry
from symbi_mcp_gateway.handlers import Handlers
from symbi_mcp_gateway.invocation import Invoker
from symbi_mcp_gateway.keys import KeyDirectory
from symbi_mcp_gateway.pins import RedisPinStore
from symbi_mcp_gateway.registry import CONFIG, Registry
from symbi_mcp_gateway.resources import ResourceReader
from symbi_mcp_gateway.sandbox_pipe import SessionOpener, local_node
from symbi_mcp_gateway.verification import Verifier
from symbi_proto.v1 import tools_pb2

log = logging.getLogger(__name__)


def published_signatures(config: McpServerConfig) -> dict[str, dict[str, str]]:
    if config.signatures is None:
        return {}
    try:
        return signatures.load_signatures_file(config.signatures)
    except InvalidArgumentError as exc:
        log.warning("MCP server %s: %s", config.name, exc.message)
        return {}


async def setup(ctx: ServiceContext) -> None:
    settings = ctx.settings
    cfg = settings.mcp
    mode = cfg.tool_verification
    status = DEGRADED if mode == "off" else SERVING  # "off" is legal but weakens a security control
    ctx.health.add_check("verification", lambda: (status, f"tool_verification={mode}"))

    redis = await redisio.attach(ctx)
    keys = KeyDirectory(trust_bundles=cfg.trust_bundles, keys_dir=cfg.keys_dir, timeout_s=cfg.well_known_timeout_s,
                        cache_s=cfg.discovery_cache_s)  # fmt: skip
    ctx.stack.push_async_callback(keys.close)
    pins = RedisPinStore(redis)
    verifier = Verifier(mode, keys, pins)
    policy = PolicyClient(settings.policy.addr, timeout_s=settings.policy.decision_timeout_s,
                          cache_size=settings.policy.cache_size, enforce=settings.security.enforce_policies,
                          actor=ctx.instance_id)  # fmt: skip
    await policy.watch(ctx.nc)
    ctx.stack.push_async_callback(policy.close)
    buffer = AuditBuffer(ctx.js, enabled=settings.security.audit_enabled)
    ctx.tasks.spawn(buffer.run(), name="audit-buffer")
    ctx.stack.push_async_callback(buffer.flush)
    publisher = AuditPublisher(ctx.js, ctx.instance_id, enabled=settings.security.audit_enabled)
    recorder = Recorder(ctx.instance_id, publisher, buffer)
    node = local_node(cfg.sandbox_node or settings.sandbox.node)
    opener = SessionOpener(ctx.nc, cfg, node, f"mcp-gateway:{ctx.instance_id}", settings.nats.request_timeout_s)
    deps = Deps(cfg, verifier, asyncio.Semaphore(cfg.max_concurrent_connections), recorder.note, opener,
                published_signatures)  # fmt: skip
    registry = Registry(deps)
    ctx.stack.push_async_callback(registry.close)
    callers = Callers(LifecycleClient(ctx.nc, timeout_s=settings.nats.request_timeout_s))
    limiter = RedisRateLimiter(redis)
    invoker = Invoker(cfg, registry, policy, limiter, recorder, callers, ctx.metrics,
                      enforce=settings.security.enforce_policies)  # fmt: skip
    reader = ResourceReader(cfg, registry, policy, limiter, recorder, callers)
    handlers = Handlers(ctx.nc, cfg, registry, invoker, reader, policy, verifier, pins, keys, callers, recorder)
    await handlers.register(ctx.serve)

    registry.apply(CONFIG, [(server, CONFIG) for server in cfg.servers])
    if cfg.discovery_enabled:

        def problem(text: str) -> None:
            ctx.health.record_error("mcp-discovery", text)

        announcements = Announcements(registry, problem)
        await announcements.subscribe(ctx.nc)
        ctx.tasks.spawn(announcements.expire(), name="mcp-announcements")
        if cfg.registry_path is not None:
            ctx.tasks.spawn(watch_registry(cfg.registry_path, registry, problem), name="mcp-registry")

    connected = Gauge("symbi_mcp_servers_connected", "MCP servers connected", registry=ctx.metrics)
    offered = Gauge("symbi_mcp_tools_offered", "Tools offered to agents", registry=ctx.metrics)
    refused = Gauge("symbi_mcp_tools_refused", "Tools refused by verification or validation", registry=ctx.metrics)

    def servers_check() -> CheckResult:
        servers = registry.servers()
        up = [s for s in servers if s.state == tools_pb2.MCP_SERVER_STATE_CONNECTED]
        connected.set(len(up))
        offered.set(sum(1 for s in servers for t in s.tools.values() if t.offered))
        refused.set(sum(1 for s in servers for t in s.tools.values() if not t.offered))
        down = [f"{s.name}: {s.detail}" for s in servers if s.state != tools_pb2.MCP_SERVER_STATE_CONNECTED]
        summary = f"{len(up)}/{len(servers)} servers connected"
        return (DEGRADED, f"{summary}; {'; '.join(down)}"[:1000]) if down else (SERVING, summary)

    ctx.health.add_check("servers", servers_check)

    def audit_check() -> CheckResult:
        if buffer.healthy:
            return SERVING, f"{buffer.pending} audit events pending"
        return NOT_SERVING, f"audit events not acknowledged: {buffer.last_error}"

    ctx.health.add_check("audit", audit_check)
    ctx.health.endpoints["sandbox_node"] = node


SPEC = ServiceSpec(name="mcp-gateway", summary="MCP tools with SchemaPin verification", setup=setup)
