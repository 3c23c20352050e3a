"""Every MCP server the gateway knows, from every source, each with its own connection task.

Sources, in order of precedence when two name the same server: the configuration
(``[[mcp.servers]]``), then registry files, then NATS announcements (the later ones
are ignored for that name, and the conflict is logged). ``apply(source, configs)``
makes a source's servers exactly ``configs``: new ones are connected, removed ones
disconnected, changed ones reconnected.

A stdio server runs unsandboxed, or in a sandbox of its configured tier. When a
call's policy decision requires a higher tier, ``connection_for`` opens (once, then
reuses) another instance of the same server in a sandbox of that tier: never a lower
tier, and never for a streamable HTTP server, which cannot be sandboxed from here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from symbi_common.errors import FailedPreconditionError, NotFoundError, UnavailableError
from symbi_common.settings import McpServerConfig
from symbi_common.supervisor import Supervisor
from symbi_mcp_gateway.catalog import ToolEntry
from symbi_mcp_gateway.connection import TIERS, Deps, ServerConnection
from symbi_proto.v1 import sandbox_pb2, tools_pb2

log = logging.getLogger(__name__)

CONFIG = "config"
PRECEDENCE = ("config", "registry", "announcement")


def base_tier(config: McpServerConfig) -> int:
    return TIERS[config.sandbox_tier] if config.sandboxed else 0


def tier_name(tier: int) -> str:
    return sandbox_pb2.SandboxTier.Name(tier).removeprefix("SANDBOX_TIER_")  # type: ignore[arg-type]


@dataclass
class Running:
    connection: ServerConnection
    task: asyncio.Task[None]


class Registry:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.sources: dict[str, dict[str, McpServerConfig]] = {kind: {} for kind in PRECEDENCE}
        self.origins: dict[str, str] = {}
        """Source detail per server ("config", "registry:<path>", "announcement:<who>")."""
        self.running: dict[tuple[str, int], Running] = {}
        self._tasks = Supervisor(on_failure=lambda name, exc: log.error("%s failed: %r", name, exc))
        self._opening: dict[tuple[str, int], asyncio.Lock] = {}

    # Sources ------------------------------------------------------------------------------

    def apply(self, kind: str, configs: list[tuple[McpServerConfig, str]]) -> None:
        """Make the servers of source ``kind`` exactly ``configs`` ((config, origin) pairs)."""
        self.sources[kind] = {c.name: c for c, _ in configs}
        for config, origin in configs:
            self.origins[f"{kind}:{config.name}"] = origin
        self._reconcile()

    def wanted(self) -> dict[str, tuple[McpServerConfig, str]]:
        out: dict[str, tuple[McpServerConfig, str]] = {}
        for kind in PRECEDENCE:
            for name, config in self.sources[kind].items():
                if not config.enabled:
                    continue
                if name in out:
                    if out[name][0] != config:
                        log.warning("MCP server %s from %s ignored: already defined by %s", name, kind, out[name][1])
                    continue
                out[name] = (config, self.origins.get(f"{kind}:{name}", kind))
        return out

    def _reconcile(self) -> None:
        wanted = self.wanted()
        for key in list(self.running):
            name = key[0]
            current = self.running[key].connection
            if name not in wanted or wanted[name][0] != current.config:
                self._stop(key)
        for name, (config, origin) in wanted.items():
            key = (name, base_tier(config))
            if key not in self.running:
                self._start(config, origin, key[1])

    def _start(self, config: McpServerConfig, origin: str, tier: int) -> ServerConnection:
        connection = ServerConnection(config, origin, self.deps, tier=tier)
        task = self._tasks.spawn(connection.run(), name=f"mcp-{config.name}-{tier}")
        self.running[(config.name, tier)] = Running(connection, task)
        log.info("MCP server %s (%s) added from %s", config.name, config.transport, origin)
        return connection

    def _stop(self, key: tuple[str, int]) -> None:
        running = self.running.pop(key)
        running.task.cancel()
        log.info("MCP server %s (tier %d) removed", key[0], key[1])

    async def close(self) -> None:
        await self._tasks.aclose(5.0)
        self.running.clear()

    # Lookup -------------------------------------------------------------------------------

    def servers(self) -> list[ServerConnection]:
        wanted = self.wanted()
        out = []
        for name, (config, _) in sorted(wanted.items()):
            running = self.running.get((name, base_tier(config)))
            if running is not None:
                out.append(running.connection)
        return out

    def get(self, name: str) -> ServerConnection:
        wanted = self.wanted().get(name)
        running = self.running.get((name, base_tier(wanted[0]))) if wanted else None
        if running is None:
            raise NotFoundError(f"no MCP server named {name!r}")
        return running.connection

    def tool(self, server: str, name: str) -> ToolEntry:
        connection = self.get(server)
        entry = connection.tools.get(name)
        if entry is None:
            if connection.state != tools_pb2.MCP_SERVER_STATE_CONNECTED and not connection.tools:
                raise UnavailableError(f"{server} is not connected: {connection.detail}")
            raise NotFoundError(f"{server} offers no tool {name!r}")
        return entry

    async def connection_for(self, server: str, tier: int) -> ServerConnection:
        """The server's connection running in at least ``tier`` (opening a sandboxed instance if needed)."""
        base = self.get(server)
        if tier <= base.tier:
            return base
        config = base.config
        if config.transport != "stdio":
            raise FailedPreconditionError(
                f"policy requires sandbox {tier_name(tier)} for {server}, a streamable HTTP server that "
                "cannot be sandboxed by the gateway"
            )
        key = (server, tier)
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            running = self.running.get(key)
            connection = running.connection if running is not None else self._start(config, base.source, tier)
        if connection.state != tools_pb2.MCP_SERVER_STATE_CONNECTED:
            timeout = self.deps.settings.connection_timeout_s + 5
            try:
                await asyncio.wait_for(connection.listed.wait(), timeout)
            except TimeoutError:
                raise UnavailableError(f"{server} in {tier_name(tier)} did not connect within {timeout:g}s") from None
        if connection.state != tools_pb2.MCP_SERVER_STATE_CONNECTED:
            raise UnavailableError(f"{server} in {tier_name(tier)}: {connection.detail}")
        return connection
