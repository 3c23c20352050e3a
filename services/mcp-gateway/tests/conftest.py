"""Gateway test setup: a real policy service, the gateway in-process, real MCP servers, a served .well-known.

``mcp`` (the ``McpStack`` fixture) holds the pieces: ``site`` serves the signing
key, ``signer`` signs tools, ``stdio(...)`` and ``http(...)`` describe real test
servers (``symbi_testing.mcp_server``), ``start(...)`` runs the gateway with them and
``ops`` is an operator's client of ``symbi.tools.*``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import register_policies
from symbi_testing.fixtures import RunService
from symbi_testing.mcp_support import McpStack, WellKnownServer

from symbi_common.settings import Settings
from symbi_mcp_gateway.service import SPEC
from symbi_policy.service import SPEC as POLICY_SPEC

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
  - name: tester-creates-agents
    effect: allow
    actions: [agent_create]
    when: subject.id == "tester"
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
      on_exceed: cap
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


@pytest_asyncio.fixture
async def policy_settings(run_service: RunService, settings: Settings, fresh_policy_log: None) -> Settings:
    runner = await run_service(POLICY_SPEC)
    addr = await register_policies(runner, POLICY, "mcp-tests.yaml")
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
    stack = McpStack(SPEC, run_service, policy_settings, nc, tmp_path, site)
    try:
        yield stack
    finally:
        if stack.runner is not None:
            await stack.runner.shutdown()
        for server in stack.http_servers:
            server.close()
        site.close()
