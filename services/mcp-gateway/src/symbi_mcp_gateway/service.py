"""MCP gateway bootstrap: NATS, health and metrics; reports its verification mode.

Connections to MCP servers and SchemaPin verification are added by the gateway work.
"""

from __future__ import annotations

from symbi_common.health import DEGRADED, SERVING
from symbi_common.service import ServiceContext, ServiceSpec


async def setup(ctx: ServiceContext) -> None:
    mode = ctx.settings.mcp.tool_verification
    # "off" is a legal setting but it weakens a security control, so it shows in health.
    status = DEGRADED if mode == "off" else SERVING
    ctx.health.add_check("verification", lambda: (status, f"tool_verification={mode}"))


SPEC = ServiceSpec(name="mcp-gateway", summary="MCP tools with SchemaPin verification", setup=setup)
