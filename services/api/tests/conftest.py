"""The whole stack behind the API, real and in-process, once per test module.

``api_stack`` starts, on the session's NATS and Redis: the policy service (with
``POLICIES``), audit, lifecycle, scheduler, a simulated sandbox worker (tasks "run"
for a moment and execute nothing), context (Qdrant local mode, the offline model),
the MCP gateway with a real stdio MCP server whose tools are SchemaPin-signed, and the
API with a known bootstrap admin key. Tests in a module share it (module event loop),
which keeps the suite fast; each starts from empty Redis, policy and audit streams.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client
from symbi_testing.checks import eventually, health_of, register_policies
from symbi_testing.fixtures import AUDIT_TEST_STREAMS, make_settings
from symbi_testing.mcp_support import SERVER_SCRIPT, Signer, WellKnownServer, signed_config, write_config
from symbi_testing.streams import delete_stream

from symbi_api.keys import KeySpec, KeyStore
from symbi_api.service import SPEC as API
from symbi_audit.service import SPEC as AUDIT
from symbi_common import natsio, subjects
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.service import ServiceRunner, ServiceSpec
from symbi_common.settings import Settings
from symbi_context.service import SPEC as CONTEXT
from symbi_lifecycle.service import SPEC as LIFECYCLE
from symbi_mcp_gateway.service import SPEC as GATEWAY
from symbi_policy.service import SPEC as POLICY
from symbi_proto.v1 import audit_pb2, common_pb2
from symbi_sandbox_orchestrator.service import SPEC as WORKER
from symbi_scheduler.service import SPEC as SCHEDULER

POLICIES = """
id: api-tests
rules:
  - name: admins-administer
    effect: allow
    actions: [admin]
    when: subject.roles contains "admin"
  - name: operators-operate
    effect: allow
    actions: [admin]
    operations: [agents.create, agents.run, agents.suspend, agents.resume, agents.terminate,
                 context.store, context.ingest, context.delete, tools.call]
    when: subject.roles contains "operator"
  - name: protected-policies-stay
    effect: deny
    actions: [admin]
    operations: [policies.delete]
    resources: ["policy:protected-*"]
    reason: protected policies are never deleted
  - name: creators
    effect: allow
    actions: [agent_create]
    when: subject.kind == "user" and subject.roles contains_any ["operator", "admin"]
  - name: task-budget
    type: resource_usage
    effect: allow
    actions: [resource_allocate]
    require:
      limits: {memory_mb: 4096, cpu_cores: 4, execution_timeout: 10m}
  - name: own-memory
    effect: allow
    actions: [data_access]
    operations: [read, write, delete]
    resources: [memory, working]
    when: resource.owner == subject.id
  - name: read-knowledge
    effect: allow
    actions: [data_access]
    operations: [read]
    resources: [knowledge]
  - name: admins-use-tools
    effect: allow
    actions: [tool_invoke]
    when: subject.kind == "user" and subject.roles contains "admin"
"""

AGENT_DSL = """
metadata {
    name = "%s"
    version = "1.0.0"
    labels = { "symbi.simulate/seconds" = "%s" }
}
agent %s() {
    capabilities = ["analyze_data"]
    tenant = "%s"
    with sandbox = "Tier1", timeout = 30s, memory = "100MB", cpu = 0.5 {
        command = ["python3", "-c", "print(1)"]
    }
}
"""


def agent_dsl(name: str, tenant: str = "t1", seconds: float = 0.2) -> str:
    return AGENT_DSL % (name, seconds, name, tenant)


@dataclass
class ApiStack:
    url: str
    admin_key: str
    settings: Settings
    nc: Client
    redis: aioredis.Redis
    runners: dict[str, ServiceRunner]
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, key: str | None = None, *, base_url: str = "") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.AsyncClient(base_url=base_url or self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.client(self.admin_key)

    async def key(self, *scopes: str, name: str = "", roles: tuple[str, ...] = (), **kw: Any) -> str:
        kw.setdefault("rate_limit_per_minute", 100_000)  # tests poll; the limit itself is tested on its own
        spec = KeySpec(name or f"tester-{secrets.token_hex(3)}", scopes, roles=roles, **kw)
        _, token = await KeyStore(self.redis).create(spec, created_by="pytest")
        return token

    @property
    def lifecycle(self) -> LifecycleClient:
        return LifecycleClient(self.nc, actor="pytest", timeout_s=10)

    async def audit_events(self, event_type: str = "api.request", **match: Any) -> list[audit_pb2.AuditEvent]:
        request = audit_pb2.AuditQueryRequest(event_types=[event_type], page=common_pb2.PageRequest(page_size=1000))
        reply = await natsio.request(self.nc, subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse, timeout=10)
        return [e for e in reply.events if all(e.details[k] == v for k, v in match.items())]

    async def audited(self, request_id: str, timeout_s: float = 10) -> audit_pb2.AuditEvent:
        """The api.request event of one request, once the audit service has appended it."""
        found: list[audit_pb2.AuditEvent] = []

        async def appended() -> bool:
            found[:] = [e for e in await self.audit_events() if e.correlation_id == request_id]
            return bool(found)

        await eventually(appended, timeout_s=timeout_s, what=f"api.request of {request_id} in the audit log")
        return found[0]


async def _start(spec: ServiceSpec, settings: Settings, runners: dict[str, ServiceRunner], name: str) -> ServiceRunner:
    runner = ServiceRunner(spec, settings, grace_s=3.0)
    runners[name] = runner
    await runner.start()
    return runner


async def _clean(nc: Client, redis: aioredis.Redis) -> None:
    await redis.flushdb()
    for stream in (subjects.POLICY_STREAM, *AUDIT_TEST_STREAMS):
        await delete_stream(nc, stream)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api_stack(nats_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiStack]:
    tmp = tmp_path_factory.mktemp("api-stack")
    base = make_settings(tmp / "state", nats_url, redis_url)
    nc = await natsio.connect(base.nats, "pytest-api")
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    await _clean(nc, redis)
    runners: dict[str, ServiceRunner] = {}
    site = WellKnownServer()
    stack: ApiStack | None = None
    try:
        policy = await _start(POLICY, base, runners, "policy")
        addr = await register_policies(policy, POLICIES, "api-tests.yaml")
        admin_key = "test-admin-" + secrets.token_hex(24)
        settings = base.with_overrides(
            {"policy.addr": addr, "api.admin_key": admin_key, "audit.checkpoint_interval_s": 0.2,
             "api.rate_limit_per_minute": 100_000, "api.rate_limit_burst": 100_000,
             "audit.fsync": "off", "scheduler.tick_interval_s": 0.05, "lifecycle.grace_period_s": 1.0}
        )  # fmt: skip
        await _start(AUDIT, settings, runners, "audit")
        await _start(LIFECYCLE, settings, runners, "lifecycle")
        await _start(SCHEDULER, settings, runners, "scheduler")
        worker = {"sandbox.runner": "simulated", "sandbox.node": "api-node", "sandbox.memory_mb": 4096,
                  "sandbox.cpu_cores": 4, "sandbox.report_interval_s": 0.2}  # fmt: skip
        await _start(WORKER, settings.with_overrides(worker), runners, "worker")
        await _start(CONTEXT, settings, runners, "context")
        signer = Signer()
        site.publish(signer)
        config = write_config(tmp / "demo.json", await signed_config(signer))
        server = {"name": "demo", "transport": "stdio", "command": [sys.executable, str(SERVER_SCRIPT), str(config)],
                  "schemapin_domain": site.base_url}  # fmt: skip
        gateway = {"mcp.servers": [server], "mcp.connection_timeout_s": 10.0, "mcp.call_timeout_s": 10.0}
        await _start(GATEWAY, settings.with_overrides(gateway), runners, "mcp-gateway")
        await _start(API, settings, runners, "api")
        url = (await health_of(nc, "api")).endpoints["http"]
        stack = ApiStack(url, admin_key, settings, nc, redis, runners)
        yield stack
    finally:
        if stack is not None:
            for http in stack.clients:
                await http.aclose()
        for runner in reversed(list(runners.values())):
            await runner.shutdown()
        site.close()
        await _clean(nc, redis)
        await redis.aclose()
        await nc.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The one error body, checked for shape; returns its ``error`` object."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "request_id", "details"}, error
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    return dict(error)


def details(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    """An audit event's details as plain data."""
    return MessageToDict(event.details)
