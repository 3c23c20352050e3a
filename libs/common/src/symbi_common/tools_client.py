"""A typed client of the MCP gateway (``symbi.tools.*``), for agents, the CLI, the API and tests.

An agent passes ``agent_id``; an operator passes ``actor`` (and ``roles``), which the
gateway uses as the policy subject when no agent is named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_common import natsio, subjects
from symbi_common.ids import new_id
from symbi_proto.v1 import tools_pb2

Resp = TypeVar("Resp", bound=Message)
T = tools_pb2
MARGIN_S = 2.0


class ToolsClient:
    def __init__(
        self,
        nc: Client,
        *,
        timeout_s: float = 30.0,
        agent_id: str = "",
        actor: str = "",
        roles: Sequence[str] = (),
    ) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.agent_id = agent_id
        self.actor = actor
        self.roles = list(roles)

    async def _call(self, operation: str, message: Message, response: type[Resp], timeout_s: float = 0) -> Resp:
        subject = subjects.tools(operation)
        return await natsio.request(self.nc, subject, message, response, timeout=timeout_s or self.timeout_s)

    async def list_tools(self, server: str = "", *, include_unverified: bool = False) -> T.ListToolsResponse:
        request = T.ListToolsRequest(agent_id=self.agent_id, server=server, include_unverified=include_unverified)
        return await self._call("list", request, T.ListToolsResponse)

    async def call(
        self,
        server: str,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = 0,
        max_result_bytes: int = 0,
        correlation_id: str = "",
    ) -> T.ToolCallResult:
        request = T.ToolCallRequest(
            call_id=new_id(),
            agent_id=self.agent_id,
            server=server,
            tool=tool,
            arguments_json=json.dumps(dict(arguments or {})),
            max_result_bytes=max_result_bytes,
            correlation_id=correlation_id,
            requested_by=self.actor,
            requester_roles=self.roles,
        )
        if timeout_s:
            request.timeout.FromNanoseconds(int(timeout_s * 1e9))
        wait = (timeout_s or self.timeout_s) + MARGIN_S
        return await self._call("call", request, T.ToolCallResult, wait)

    async def list_resources(self, server: str = "") -> T.ListResourcesResponse:
        request = T.ListResourcesRequest(
            agent_id=self.agent_id, server=server, requested_by=self.actor, requester_roles=self.roles
        )
        return await self._call("list_resources", request, T.ListResourcesResponse)

    async def read_resource(self, server: str, uri: str, *, max_bytes: int = 0) -> T.ReadResourceResponse:
        request = T.ReadResourceRequest(
            agent_id=self.agent_id,
            server=server,
            uri=uri,
            max_bytes=max_bytes,
            requested_by=self.actor,
            requester_roles=self.roles,
        )
        return await self._call("read_resource", request, T.ReadResourceResponse)

    async def servers(self) -> T.ListServersResponse:
        return await self._call("servers", T.ListServersRequest(), T.ListServersResponse)

    async def pins(self, server: str = "") -> T.ListPinsResponse:
        return await self._call("pins", T.ListPinsRequest(server=server), T.ListPinsResponse)

    async def pin(self, server: str, tool: str, fingerprint: str = "") -> T.PinToolResponse:
        request = T.PinToolRequest(
            server=server, tool=tool, key_fingerprint=fingerprint, requested_by=self.actor, requester_roles=self.roles
        )
        return await self._call("pin", request, T.PinToolResponse)

    async def unpin(self, server: str, tool: str) -> T.UnpinToolResponse:
        request = T.UnpinToolRequest(server=server, tool=tool, requested_by=self.actor, requester_roles=self.roles)
        return await self._call("unpin", request, T.UnpinToolResponse)

    async def verify(self, server: str, tool: str) -> T.VerifyToolResponse:
        return await self._call("verify", T.VerifyToolRequest(server=server, tool=tool), T.VerifyToolResponse)
