"""Gateway test setup: a real policy service, the gateway in-process, real MCP servers, a served .well-known.

``mcp`` (the ``McpStack`` fixture) holds the pieces: ``site`` serves the signing
key, ``signer`` signs tools, ``stdio(...)`` and ``http(...)`` describe real test
servers (``symbi_testing.mcp_server``), ``start(...)`` runs the gateway with them and
``ops`` is an operator's client of ``symbi.tools.*``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService
from symbi_testing.mcp_support import SERVER_SCRIPT, HttpMcpServer, Signer, WellKnownServer, write_config

from symbi_common.policy_client import PolicyClient
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_common.tools_client import ToolsClient
from symbi_mcp_gateway.service import SPEC
from symbi_policy.service import SPEC as POLICY_SPEC
from symbi_proto.v1 import tools_pb2

POLICY = """
id: mcp-tests
rules:
  - name: operators-use-tools
    effect: allow
    actions: [tool_invoke]
    when: subject.kind == "user" and subject.roles contains "operator"
  - name: agents-with-the-capability
    effect: allow
    actions: [tool_invoke]
    when: subject.kind == "agent" and subject.capabilities contains "demo_tools"
  - name: no-mallory
    effect: deny
    actions: [tool_invoke]
    when: subject.id == "mallory"
    reason: mallory may not use tools
  - name: operators-pin
    effect: allow
    actions: [admin]
    resources: [tool_pin]
    when: subject.roles contains "operator"
  - name: redact-for-redactee
    effect: require
    actions: [tool_invoke]
    when: subject.id == "redactee"
    require:
      redact: {paths: [arguments.text], replacement: "[redacted]"}
  - name: limit-limited
    effect: require
    actions: [tool_invoke]
    when: subject.id == "limited"
    require:
      rate_limit: {key: "test:{subject.id}", limit: 2, period: 1m}
  - name: small-results
    effect: require
    actions: [tool_invoke]
    when: subject.id == "small"
    require:
      max_bytes: 16
  - name: audited
    effect: require
    actions: [tool_invoke]
    when: subject.id == "audited"
    require:
      audit: {record_inputs: true, record_outputs: true, category: tests}
  - name: approval-needed
    effect: require
    actions: [tool_invoke]
    when: subject.id == "approver-needed"
    require:
      human_approval: {approver_group: security, timeout: 1m, reason: test}
  - name: sandboxed-for-tier
    effect: require
    actions: [tool_invoke]
    when: subject.id == "tier1-caller"
    require:
      sandbox_tier: Tier1
"""


@dataclass
class McpStack:
    run_service: RunService
    settings: Settings
    nc: Client
    tmp: Path
    site: WellKnownServer
    signer: Signer = field(default_factory=Signer)
    runner: ServiceRunner | None = None
    http_servers: list[HttpMcpServer] = field(default_factory=list)

    def client(self, actor: str = "ops", roles: tuple[str, ...] = ("operator",), agent_id: str = "") -> ToolsClient:
        return ToolsClient(self.nc, timeout_s=15, actor=actor, roles=roles, agent_id=agent_id)

    @property
    def ops(self) -> ToolsClient:
        return self.client()

    def config_file(self, name: str, config: dict[str, Any]) -> Path:
        return write_config(self.tmp / f"{name}.json", config)

    def stdio(self, name: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        path = self.config_file(name, config or {})
        return {"name": name, "transport": "stdio", "command": [sys.executable, str(SERVER_SCRIPT), str(path)],
                "schemapin_domain": self.site.base_url, **extra}  # fmt: skip

    def http(self, name: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        server = HttpMcpServer(self.config_file(name, config or {}))
        self.http_servers.append(server)
        return {"name": name, "transport": "streamable_http", "url": server.url,
                "schemapin_domain": self.site.base_url, **extra}  # fmt: skip

    async def start(self, servers: list[dict[str, Any]], *, mode: str = "strict", **mcp: Any) -> ServiceRunner:
        overrides = {"mcp.servers": servers, "mcp.tool_verification": mode, "mcp.connection_timeout_s": 5.0,
                     "mcp.reconnect_max_backoff_s": 1.0, "mcp.call_timeout_s": 10.0}  # fmt: skip
        overrides |= {f"mcp.{k}": v for k, v in mcp.items()}
        self.site.publish(self.signer)
        self.runner = await self.run_service(SPEC, self.settings.with_overrides(overrides))
        return self.runner

    async def connected(self, *names: str, timeout_s: float = 20.0) -> None:
        async def up() -> bool:
            states = {s.name: s.state for s in (await self.ops.servers()).servers}
            return all(states.get(n) == tools_pb2.MCP_SERVER_STATE_CONNECTED for n in names)

        await eventually(up, timeout_s=timeout_s, what=f"servers {names} connected")


@pytest_asyncio.fixture
async def policy_settings(run_service: RunService, settings: Settings, fresh_policy_log: None) -> Settings:
    runner = await run_service(POLICY_SPEC)
    assert runner.ctx is not None
    addr = runner.ctx.health.endpoints["grpc"]
    client = PolicyClient(addr)
    try:
        await client.register(POLICY, name="mcp-tests.yaml")
    finally:
        await client.close()
    return settings.with_overrides({"policy.addr": addr})


@pytest_asyncio.fixture
async def mcp(
    run_service: RunService,
    policy_settings: Settings,
    nc: Client,
    tmp_path: Path,
    fresh_redis: None,
    fresh_audit_streams: None,
) -> AsyncIterator[McpStack]:
    site = WellKnownServer()
    stack = McpStack(run_service, policy_settings, nc, tmp_path, site)
    try:
        yield stack
    finally:
        if stack.runner is not None:
            await stack.runner.shutdown()
        for server in stack.http_servers:
            server.close()
        site.close()


def result_json(result: tools_pb2.ToolCallResult) -> Any:
    return json.loads(result.structured_content_json) if result.structured_content_json else None
