"""/v1/tools: MCP tools through the gateway: list, call, servers, pins.

A call is made either for an agent (``agent_id``: the gateway decides ``tool_invoke``
with the agent as subject) or as the key's principal (``requested_by`` and its roles).
Calls and pin changes are admitted by the guard first; the gateway then applies its
own policy decision, rate limits, redaction and audit to the call.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import NAME_PATTERN, Body, JsonObject, visible_agent
from symbi_api.runtime import Api, api, to_json
from symbi_common.errors import from_detail
from symbi_common.policy_client import Target

router = APIRouter(prefix="/v1/tools", tags=["tools"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("tools:read"))]
Call = Annotated[ApiKey, Depends(require("tools:call"))]
Admin = Annotated[ApiKey, Depends(require("tools:admin"))]
Server = Annotated[str, Path(pattern=NAME_PATTERN, description="an MCP server's configured name")]
Tool = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="a tool's name on that server")]


class ToolCall(Body):
    arguments: JsonObject = Field(default_factory=dict, description="checked against the tool's input schema")
    agent_id: str = Field(default="", max_length=128, description="call as this agent (default: as the key)")
    timeout_s: float = Field(default=0, ge=0, le=3600, description="0: the gateway's default")
    max_result_bytes: int = Field(default=0, ge=0, le=256 * 1024 * 1024, description="0: the gateway's default")


class Pin(Body):
    fingerprint: str = Field(default="", max_length=256, description="the key fingerprint expected (optional)")


@router.get("", summary="Verified tools (every tool with include_unverified)")
async def list_tools(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    server: Annotated[str, Query(max_length=64)] = "",
    include_unverified: bool = False,
) -> JsonObject:
    return to_json(await a.tools(caller).list_tools(server, include_unverified=include_unverified))


@router.get("/servers", summary="MCP servers and their connection state")
async def servers(caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return to_json(await a.tools(caller).servers())


@router.get("/pins", summary="Pinned tool keys (SchemaPin TOFU pins)")
async def pins(
    caller: Read, a: Annotated[Api, Depends(api)], server: Annotated[str, Query(max_length=64)] = ""
) -> JsonObject:
    return to_json(await a.tools(caller).pins(server))


@router.post("/{server}/{tool}/call", summary="Call a tool")
async def call(
    server: Server, tool: Tool, body: ToolCall, request: Request, caller: Call, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    if body.agent_id:
        await visible_agent(a, caller, body.agent_id)
    await a.guard.admit(request, caller, "tools.call", Target("tool", f"{server}/{tool}"))
    client = a.tools(caller, agent_id=body.agent_id)
    result = await client.call(
        server,
        tool,
        body.arguments,
        timeout_s=body.timeout_s,
        max_result_bytes=body.max_result_bytes,
        correlation_id=request.state.request_id,
    )
    if result.HasField("error"):
        raise from_detail(result.error)
    return to_json(result)


@router.post("/{server}/{tool}/pin", summary="Pin (or re-pin) a tool's signing key")
async def pin(
    server: Server, tool: Tool, body: Pin, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await a.guard.admit(request, caller, "tools.pin", Target("tool_pin", f"{server}/{tool}"))
    return to_json(await a.tools(caller).pin(server, tool, body.fingerprint))


@router.delete("/{server}/{tool}/pin", summary="Remove a tool's pin")
async def unpin(
    server: Server, tool: Tool, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await a.guard.admit(request, caller, "tools.unpin", Target("tool_pin", f"{server}/{tool}"))
    return to_json(await a.tools(caller).unpin(server, tool))
