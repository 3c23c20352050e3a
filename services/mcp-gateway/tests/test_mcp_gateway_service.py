"""The MCP gateway reports its verification mode; `off` is visible as degraded."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from symbi_testing.checks import components, health_of
from symbi_testing.fixtures import RunService

from symbi_common.health import DEGRADED, SERVING
from symbi_common.settings import Settings
from symbi_mcp_gateway.service import SPEC

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("mode", "expected"), [("strict", SERVING), ("off", DEGRADED)])
async def test_verification_mode_in_health(
    run_service: RunService, nc: Client, settings: Settings, mode: str, expected: int
) -> None:
    await run_service(SPEC, settings.with_overrides({"mcp.tool_verification": mode}))
    status = await health_of(nc, "mcp-gateway")
    check = components(status)["verification"]
    assert check.status == expected
    assert check.detail == f"tool_verification={mode}"
    assert status.status == expected
