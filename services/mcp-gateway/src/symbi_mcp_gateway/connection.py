"""One MCP server: connect, list and verify its tools, serve calls, reconnect with backoff.

``run()`` is the connection's life, as one supervised task: take a connection slot
(``[mcp].max_concurrent_connections`` are open at once), open the transport (stdio
process, sandbox session or streamable HTTP), do the SDK's handshake within
``connection_timeout_s``, list tools and resources and verify every tool, then wait
for the refresh interval, a refresh request or the transport's end. Any failure
(the server is down, hangs, crashes, sends something malformed or oversized) ends
this connection alone: it is reported in the server's state and detail, and it is
opened again after a jittered exponential backoff. Calls made meanwhile fail at
once with ``unavailable`` and the reason. Other servers are never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import pydantic
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from symbi_common import __version__
from symbi_common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    SymbiError,
    UnavailableError,
)
from symbi_common.retry import RetryPolicy
from symbi_common.settings import McpServerConfig, McpSettings
from symbi_mcp_gateway.catalog import ToolEntry, refusal, wire_form
from symbi_mcp_gateway.lines import BytePipe, LinkStatus, line_transport
from symbi_mcp_gateway.process_pipe import ProcessPipe
from symbi_mcp_gateway.verification import Verifier
from symbi_proto.v1 import sandbox_pb2, tools_pb2

log = logging.getLogger(__name__)

S = tools_pb2
MAX_PAGES = 100
PipeOpener = Callable[[McpServerConfig, int], Awaitable[BytePipe]]
"""Opens a sandbox session for a stdio server at a tier (``sandbox_pipe.SessionOpener``)."""
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Deps:
    """What every connection shares."""

    settings: McpSettings
    verifier: Verifier
    slots: asyncio.Semaphore
    events: EventSink
    open_sandbox: PipeOpener | None = None
    published: Callable[[McpServerConfig], Mapping[str, Mapping[str, str]]] = lambda config: {}
    """Signatures from the server's signatures file, per tool."""


def map_call_error(exc: BaseException, server: str, what: str, status: LinkStatus | None) -> SymbiError:
    """A failed request as a typed error naming the server and the cause."""
    cause = status.failure if status is not None and status.failure else ""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, SymbiError):
        return exc
    if isinstance(exc, MCPError):
        if exc.code == types.REQUEST_TIMEOUT:
            return DeadlineExceededError(f"{server}: {what} got no answer in time")
        if exc.code == types.CONNECTION_CLOSED:
            return UnavailableError(f"{server}: connection lost during {what}" + (f": {cause}" if cause else ""))
        return FailedPreconditionError(f"{server}: {what} failed: JSON-RPC error {exc.code}: {exc.error.message}")
    if isinstance(exc, TimeoutError):
        return DeadlineExceededError(f"{server}: {what} got no answer in time")
    if isinstance(exc, pydantic.ValidationError):
        return UnavailableError(f"{server}: {what}: the server's answer is not valid MCP ({exc.error_count()} errors)")
    return UnavailableError(f"{server}: {what} failed: {cause or repr(exc)}")


class ServerConnection:
    def __init__(self, config: McpServerConfig, source: str, deps: Deps, *, tier: int = 0) -> None:
        self.config = config
        self.source = source
        self.deps = deps
        self.tier = tier
        """Sandbox tier it runs in (0: not sandboxed)."""
        self.state = S.MCP_SERVER_STATE_CONNECTING
        self.detail = "not connected yet"
        self.last_seen = 0.0
        self.attempts = 0
        self.tools: dict[str, ToolEntry] = {}
        self.resources: list[tools_pb2.ResourceDescriptor] = []
        self.client: Client | None = None
        self.status: LinkStatus | None = None
        self.listed = asyncio.Event()
        """Set once a listing (successful or not) has finished; cleared when a refresh starts."""
        self._wake = asyncio.Event()
        self._broken = False
        self._down_reported = False
        self._backoff = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=deps.settings.reconnect_max_backoff_s)

    @property
    def name(self) -> str:
        return self.config.name

    # Life ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, until cancelled."""
        while True:
            try:
                await self._connected_life()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anything the server or transport did: this connection alone ends
                self._fail(self._describe(exc))
            finally:
                self.client = None
            delay = self._backoff.backoff(min(self.attempts, 16))
            self.attempts += 1
            await asyncio.sleep(delay)

    def _describe(self, exc: BaseException) -> str:
        if self.status is not None and self.status.failure:
            return self.status.failure
        return map_call_error(exc, self.name, "connect", None).message

    def _fail(self, why: str) -> None:
        self.state = S.MCP_SERVER_STATE_DISCONNECTED
        self.detail = why
        self.listed.set()
        if not self._down_reported:
            self._down_reported = True
            log.warning("MCP server %s: %s", self.name, why)
            self.deps.events("tool.server.disconnected", {"server": self.name, "detail": why, "tier": self.tier})

    async def _connected_life(self) -> None:
        first = not self._down_reported  # while reconnecting, the state stays DISCONNECTED with the last reason
        if first:
            self.state, self.detail = S.MCP_SERVER_STATE_CONNECTING, "waiting for a connection slot"
        async with self.deps.slots:
            if first:
                self.detail = "connecting"
            self.status = LinkStatus()
            self._broken = False
            client = Client(
                self._transport(self.status),
                cache=None,
                read_timeout_seconds=self.deps.settings.connection_timeout_s,
                client_info=types.Implementation(name="symbi-mcp-gateway", version=__version__),
            )
            async with contextlib.AsyncExitStack() as stack:
                limit = self.deps.settings.connection_timeout_s
                try:
                    async with asyncio.timeout(limit):  # the SDK's own discover probe waits 10s whatever we say
                        await stack.enter_async_context(client)
                except TimeoutError:
                    raise DeadlineExceededError(f"{self.name}: no answer to the handshake within {limit:g}s") from None
                self.client = client
                await self._refresh(client)
                self.state, self.detail, self.attempts = S.MCP_SERVER_STATE_CONNECTED, "connected", 0
                self._down_reported = False
                self.deps.events("tool.server.connected", {"server": self.name, "tier": self.tier,
                                                            "tools": len(self.tools)})  # fmt: skip
                watcher = asyncio.ensure_future(self._watch_transport(self.status))
                try:
                    await self._serve(client)
                finally:
                    watcher.cancel()

    async def _serve(self, client: Client) -> None:
        interval = self.deps.settings.refresh_interval_s
        while True:
            if not self._broken:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._broken:
                raise UnavailableError("the connection broke")
            await self._refresh(client)

    async def _watch_transport(self, status: LinkStatus) -> None:
        await status.closed.wait()
        self.mark_broken()

    def mark_broken(self, why: str = "") -> None:
        """The transport is gone: calls fail at once from now on, and the run loop reconnects."""
        self._broken = True
        if self.state == S.MCP_SERVER_STATE_CONNECTED:
            self.state = S.MCP_SERVER_STATE_DISCONNECTED
            self.detail = (self.status.failure if self.status is not None else "") or why or "connection lost"
        self._wake.set()

    def request_refresh(self) -> None:
        self.listed.clear()
        self._wake.set()

    async def refreshed(self, timeout_s: float) -> None:
        """Ask for a listing now and wait for it (or for the connection to fail)."""
        self.request_refresh()
        try:
            await asyncio.wait_for(self.listed.wait(), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(f"{self.name}: no listing within {timeout_s:g}s ({self.detail})") from None

    def _transport(self, status: LinkStatus) -> AbstractAsyncContextManager[TransportStreams]:
        cfg = self.config
        if cfg.transport == "streamable_http":
            return streamable_http_client(cfg.url)
        limit = self.deps.settings.max_message_bytes
        if self.tier:
            opener = self.deps.open_sandbox
            if opener is None:
                raise FailedPreconditionError(f"{cfg.name} must run sandboxed and no sandbox is configured")
            return _piped(lambda: opener(cfg, self.tier), limit, status)
        return _piped(lambda: ProcessPipe.start(cfg.name, cfg.command, cfg.env, cfg.cwd), limit, status)

    # Listing ------------------------------------------------------------------------------

    async def _refresh(self, client: Client) -> None:
        try:
            await self._list_tools(client)
            self.resources = await self._list_resources(client)
            self.last_seen = time.time()
        except BaseException as exc:
            self.detail = map_call_error(exc, self.name, "listing", self.status).message
            raise
        finally:
            self.listed.set()

    async def _list_tools(self, client: Client) -> None:
        listed: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None or len(listed) > self.deps.settings.max_tools_per_server:
                break
        limit = self.deps.settings.max_tools_per_server
        if len(listed) > limit:
            raise FailedPreconditionError(f"{self.name} lists more than {limit} tools")
        published = self.deps.published(self.config)
        fresh: dict[str, ToolEntry] = {}
        seen: set[str] = set()
        for tool in listed:
            wire = wire_form(tool)
            refused = refusal(wire, seen)
            seen.add(tool.name)
            verdict = await self.deps.verifier.verify(
                self.name, self.config.schemapin_domain, wire, published.get(tool.name)
            )
            entry = ToolEntry(self.name, tool.name, wire, verdict, refused)
            self._report(entry, self.tools.get(tool.name))
            fresh.setdefault(tool.name, entry)
        self.tools = fresh

    def _report(self, entry: ToolEntry, before: ToolEntry | None) -> None:
        v = entry.verdict
        changed = before is None or (before.verdict.status, before.offered, before.verdict.descriptor_sha256) != (
            v.status,
            entry.offered,
            v.descriptor_sha256,
        )
        if v.newly_pinned:
            self.deps.events("tool.pinned", {"server": self.name, "tool": entry.name, "fingerprint": v.fingerprint,
                                             "by": "tofu", "descriptor_sha256": v.descriptor_sha256})  # fmt: skip
        if changed:
            if not entry.offered:
                log.warning("tool %s/%s refused: %s (%s)", self.name, entry.name, v.status_name, entry.detail)
            self.deps.events("tool.verification", {
                "server": self.name, "tool": entry.name, "status": v.status_name, "offered": entry.offered,
                "detail": entry.detail, "fingerprint": v.fingerprint, "coverage": v.coverage,
                "descriptor_sha256": v.descriptor_sha256, "descriptor_updated": v.descriptor_updated,
            })  # fmt: skip

    async def _list_resources(self, client: Client) -> list[tools_pb2.ResourceDescriptor]:
        caps = client.server_capabilities
        if caps.resources is None:
            return []
        out: list[tools_pb2.ResourceDescriptor] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_resources(cursor=cursor)
            out.extend(
                tools_pb2.ResourceDescriptor(server=self.name, uri=str(r.uri), name=r.name,
                                             description=r.description or "", mime_type=r.mime_type or "")
                for r in page.resources
            )  # fmt: skip
            cursor = page.next_cursor
            if cursor is None:
                break
        return out

    # Calls --------------------------------------------------------------------------------

    def _client(self) -> Client:
        client = self.client
        if client is None or self._broken or self.state != S.MCP_SERVER_STATE_CONNECTED:
            raise UnavailableError(f"{self.name} is not connected: {self.detail}")
        return client

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout_s: float) -> types.CallToolResult:
        client = self._client()
        try:
            return await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except BaseException as exc:
            error = map_call_error(exc, self.name, f"tools/call {name}", self.status)
            if isinstance(error, UnavailableError):
                self.mark_broken(error.message)
            raise error from None

    async def read_resource(self, uri: str, timeout_s: float) -> types.ReadResourceResult:
        client = self._client()
        try:
            with_timeout = asyncio.wait_for(client.session.read_resource(uri), timeout_s)
            result = await with_timeout
        except BaseException as exc:
            error = map_call_error(exc, self.name, f"resources/read {uri}", self.status)
            if isinstance(error, UnavailableError):
                self.mark_broken(error.message)
            raise error from None
        if not isinstance(result, types.ReadResourceResult):
            raise FailedPreconditionError(f"{self.name}: resources/read {uri} asked for input; not supported")
        return result

    def to_proto(self) -> tools_pb2.McpServer:
        cfg = self.config
        out = tools_pb2.McpServer(
            name=cfg.name,
            transport=S.MCP_TRANSPORT_STREAMABLE_HTTP if cfg.transport == "streamable_http" else S.MCP_TRANSPORT_STDIO,
            url=cfg.url,
            command=list(cfg.command),
            schemapin_domain=cfg.schemapin_domain,
            state=self.state,
            detail=self.detail,
            tool_count=sum(1 for t in self.tools.values() if t.offered),
            sandboxed=bool(self.tier),
            source=self.source,
            sandbox_tier=self.tier,  # type: ignore[arg-type]
            reconnect_attempts=self.attempts,
            refused_tool_count=sum(1 for t in self.tools.values() if not t.offered),
        )
        if self.last_seen:
            out.last_seen.FromNanoseconds(int(self.last_seen * 1e9))
        return out


@asynccontextmanager
async def _piped(
    open_pipe: Callable[[], Awaitable[BytePipe]], limit: int, status: LinkStatus
) -> AsyncIterator[TransportStreams]:
    pipe = await open_pipe()
    entered = False
    try:
        async with line_transport(pipe, limit, status) as streams:
            entered = True
            yield streams
    finally:
        if not entered:  # cancelled before the transport took charge of the pipe: stop the server here
            await asyncio.shield(pipe.close())


TIERS = {"Tier1": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "Tier2": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}
