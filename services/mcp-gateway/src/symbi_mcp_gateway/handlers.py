"""The gateway's NATS API (``symbi.tools.<operation>``), for agents, the CLI and the API.

=================  =====================  ===========================================
operation          request                what
=================  =====================  ===========================================
``list``           ListToolsRequest       offered tools (an agent sees only those policy lets it call)
``call``           ToolCallRequest        one tool call (``invocation.py``)
``list_resources`` ListResourcesRequest   resources of connected servers
``read_resource``  ReadResourceRequest    one resource, policy-checked and audited
``servers``        ListServersRequest     every server with its state
``pins``           ListPinsRequest        persisted key pins
``pin``            PinToolRequest         an operator (re-)pins a tool's key (admin policy)
``unpin``          UnpinToolRequest       an operator removes a pin (admin policy)
``verify``         VerifyToolRequest      list and verify the tool's server again now
=================  =====================  ===========================================

Pins are shared by every replica (Redis); after a pin or unpin, ``refresh`` is
published so every replica verifies the server's tools again.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg

from symbi_common import natsio, subjects
from symbi_common.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError, SymbiError
from symbi_common.ids import new_id
from symbi_common.policy_client import PolicyDecider, Principal, Target, is_allowed, request
from symbi_common.settings import McpSettings
from symbi_mcp_gateway.audit import Recorder
from symbi_mcp_gateway.callers import Callers
from symbi_mcp_gateway.invocation import Invoker
from symbi_mcp_gateway.keys import KeyDirectory
from symbi_mcp_gateway.pins import PinStore
from symbi_mcp_gateway.registry import Registry
from symbi_mcp_gateway.resources import ResourceReader
from symbi_mcp_gateway.verification import Verifier
from symbi_proto.v1 import tools_pb2

log = logging.getLogger(__name__)

T = tools_pb2
REFRESH = subjects.tools("refresh")


class Handlers:
    def __init__(
        self,
        nc: Client,
        settings: McpSettings,
        registry: Registry,
        invoker: Invoker,
        reader: ResourceReader,
        policy: PolicyDecider,
        verifier: Verifier,
        pins: PinStore,
        keys: KeyDirectory,
        callers: Callers,
        recorder: Recorder,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.registry = registry
        self.invoker = invoker
        self.reader = reader
        self.policy = policy
        self.verifier = verifier
        self.pins = pins
        self.keys = keys
        self.callers = callers
        self.recorder = recorder

    async def register(self, serve: Any) -> None:
        for operation, request_type, handler in (
            ("list", T.ListToolsRequest, self.list_tools),
            ("call", T.ToolCallRequest, self.call),
            ("list_resources", T.ListResourcesRequest, self.list_resources),
            ("read_resource", T.ReadResourceRequest, self.read_resource),
            ("servers", T.ListServersRequest, self.servers),
            ("pins", T.ListPinsRequest, self.list_pins),
            ("pin", T.PinToolRequest, self.pin),
            ("unpin", T.UnpinToolRequest, self.unpin),
            ("verify", T.VerifyToolRequest, self.verify),
        ):
            await serve(subjects.tools(operation), request_type, handler, queue="mcp-gateway", concurrent=True)

        async def on_refresh(msg: Msg) -> None:
            note = T.RefreshServer()
            try:
                note.ParseFromString(msg.data)
                self.registry.get(note.server).request_refresh()
            except (DecodeError, SymbiError) as exc:
                log.debug("refresh request ignored: %s", exc)

        await self.nc.subscribe(REFRESH, cb=on_refresh)

    # Tools --------------------------------------------------------------------------------

    async def list_tools(self, req: T.ListToolsRequest, _: natsio.RequestMeta) -> Message:
        if req.include_unverified and req.agent_id:
            raise PermissionDeniedError("agents are offered verified tools only; include_unverified is for operators")
        out = T.ListToolsResponse()
        mode = self.verifier.mode
        candidates = []
        for connection in self.registry.servers():
            if req.server and connection.name != req.server:
                continue
            if connection.state != T.MCP_SERVER_STATE_CONNECTED:
                out.unavailable_servers.append(connection.to_proto())
            for entry in connection.tools.values():
                if entry.offered or req.include_unverified:
                    candidates.append(entry)
        if req.server and not any(c.name == req.server for c in self.registry.servers()):
            raise NotFoundError(f"no MCP server named {req.server!r}")
        if req.agent_id and candidates:
            who = await self.callers.principal(req.agent_id, "", ())
            decisions = await self.policy.evaluate_batch(
                [
                    request("tool_invoke", who, Target("tool", f"{e.server}/{e.name}", tenant=who.tenant),
                            operation="call")
                    for e in candidates
                ]
            )  # fmt: skip
            candidates = [e for e, d in zip(candidates, decisions, strict=True) if is_allowed(d)]
        out.tools.extend(entry.to_proto(mode) for entry in candidates)
        return out

    async def call(self, req: T.ToolCallRequest, _: natsio.RequestMeta) -> Message:
        return await self.invoker.call(req)

    async def verify(self, req: T.VerifyToolRequest, _: natsio.RequestMeta) -> Message:
        connection = self.registry.get(req.server)
        self.keys.forget(connection.config.schemapin_domain)
        await connection.refreshed(self.settings.connection_timeout_s + 5)
        entry = self.registry.tool(req.server, req.tool)
        return T.VerifyToolResponse(tool=entry.to_proto(self.verifier.mode))

    # Resources ----------------------------------------------------------------------------

    async def list_resources(self, req: T.ListResourcesRequest, _: natsio.RequestMeta) -> Message:
        return await self.reader.list(req)

    async def read_resource(self, req: T.ReadResourceRequest, _: natsio.RequestMeta) -> Message:
        return await self.reader.read(req)

    # Servers and pins ---------------------------------------------------------------------

    async def servers(self, _: T.ListServersRequest, __: natsio.RequestMeta) -> Message:
        return T.ListServersResponse(servers=[c.to_proto() for c in self.registry.servers()])

    async def list_pins(self, req: T.ListPinsRequest, _: natsio.RequestMeta) -> Message:
        return T.ListPinsResponse(pins=[p.to_proto() for p in await self.pins.all(req.server)])

    async def _admin(self, operation: str, who: str, roles: Any, server: str, tool: str) -> None:
        if not who:
            raise InvalidArgumentError(f"{operation} needs requested_by (the operator)")
        decision = await self.policy.evaluate(
            request("admin", Principal("user", who, roles=list(roles)), Target("tool_pin", f"{server}/{tool}"),
                    operation=operation, correlation_id=new_id())
        )  # fmt: skip
        if not is_allowed(decision):
            self.recorder.note("tool.admin_denied", {"operation": operation, "tool": f"{server}/{tool}",
                                                     "requested_by": who, "reason": decision.deny.reason})  # fmt: skip
            raise PermissionDeniedError(decision.deny.reason or "denied by policy")

    async def pin(self, req: T.PinToolRequest, _: natsio.RequestMeta) -> Message:
        await self._admin("pin", req.requested_by, req.requester_roles, req.server, req.tool)
        connection = self.registry.get(req.server)
        entry = self.registry.tool(req.server, req.tool)
        published = self._published(connection.config).get(req.tool)
        verdict = await self.verifier.repin(
            req.server,
            connection.config.schemapin_domain,
            entry.wire,
            published,
            expected_fingerprint=req.key_fingerprint,
            by=req.requested_by,
        )
        pin = await self.pins.get(req.server, req.tool)
        assert pin is not None
        details = {"server": req.server, "tool": req.tool, "fingerprint": pin.fingerprint, "by": req.requested_by}
        self.recorder.note("tool.pinned", {**details, "descriptor_sha256": pin.descriptor_sha256})
        entry.verdict = verdict
        await self._refresh_everywhere(req.server)
        return T.PinToolResponse(pin=pin.to_proto(), tool=entry.to_proto(self.verifier.mode))

    async def unpin(self, req: T.UnpinToolRequest, _: natsio.RequestMeta) -> Message:
        await self._admin("unpin", req.requested_by, req.requester_roles, req.server, req.tool)
        removed = await self.pins.remove(req.server, req.tool)
        self.recorder.note("tool.unpinned", {"server": req.server, "tool": req.tool, "by": req.requested_by,
                                             "removed": removed})  # fmt: skip
        if removed:
            await self._refresh_everywhere(req.server)
        return T.UnpinToolResponse(removed=removed)

    def _published(self, config: Any) -> Any:
        return self.registry.deps.published(config)

    async def _refresh_everywhere(self, server: str) -> None:
        try:
            await self.nc.publish(REFRESH, T.RefreshServer(server=server).SerializeToString())
        except Exception as exc:  # this replica refreshes anyway; the others at their interval
            log.warning("cannot announce the refresh of %s: %r", server, exc)
            self.registry.get(server).request_refresh()
