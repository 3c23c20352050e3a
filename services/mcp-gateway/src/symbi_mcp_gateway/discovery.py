"""Server discovery (``[mcp].discovery_enabled``): registry files and NATS announcements.

Registry: ``[mcp].registry_path`` is a file, or a directory of ``*.toml`` / ``*.json``
files, each ``{"servers": [<server>, ...]}`` with the keys of ``[[mcp.servers]]``. It
is read at start and again whenever a file changes (polled); an invalid entry is
skipped and reported (log and health), the others still apply.

Announcements: an ``McpServerAnnouncement`` on ``symbi.tools.announcements`` adds or
replaces a server, ``withdrawn`` removes it, and one not announced again within its
``ttl`` is forgotten. An announced stdio server always runs sandboxed (Tier 2 unless
the announcement names Tier 1): a message on NATS never makes the gateway run a
command on its own host. Only enable discovery where NATS permissions restrict who
may publish announcements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from symbi_common import subjects
from symbi_common.settings import McpServerConfig
from symbi_mcp_gateway.registry import Registry
from symbi_proto.v1 import sandbox_pb2, tools_pb2

log = logging.getLogger(__name__)

POLL_S = 2.0
SWEEP_S = 1.0


def registry_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".toml", ".json") and p.is_file())
    return [path] if path.is_file() else []


def read_registry(path: Path, problems: list[str]) -> list[tuple[McpServerConfig, str]]:
    out: list[tuple[McpServerConfig, str]] = []
    for file in registry_files(path):
        try:
            text = file.read_text(encoding="utf-8")
            data: Any = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            problems.append(f"{file}: {exc}")
            continue
        servers = data.get("servers") if isinstance(data, dict) else None
        if not isinstance(servers, list):
            problems.append(f"{file}: no `servers` list")
            continue
        for index, raw in enumerate(servers):
            try:
                out.append((McpServerConfig.model_validate(raw), f"registry:{file}"))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "entry"
                problems.append(f"{file}: servers[{index}].{where}: {first['msg']}")
    return out


def _stamp(path: Path) -> tuple[tuple[str, float, int], ...]:
    stamps = []
    for file in registry_files(path):
        try:
            stat = file.stat()
        except OSError:
            continue
        stamps.append((str(file), stat.st_mtime, stat.st_size))
    return tuple(stamps)


async def watch_registry(path: Path, registry: Registry, on_problem: Callable[[str], None]) -> None:
    """Apply the registry now and after every change (a background task)."""
    seen: tuple[tuple[str, float, int], ...] | None = None
    while True:
        stamp = await asyncio.to_thread(_stamp, path)
        if stamp != seen:
            seen = stamp
            problems: list[str] = []
            configs = await asyncio.to_thread(read_registry, path, problems)
            for problem in problems:
                log.warning("MCP registry: %s", problem)
                on_problem(problem)
            registry.apply("registry", configs)
            log.info("MCP registry %s: %d servers", path, len(configs))
        await asyncio.sleep(POLL_S)


def config_of(server: tools_pb2.McpServer) -> McpServerConfig:
    """The configuration of an announced server (stdio ones forced into a sandbox)."""
    stdio = server.transport != tools_pb2.MCP_TRANSPORT_STREAMABLE_HTTP
    tier = "Tier1" if server.sandbox_tier == sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER else "Tier2"
    return McpServerConfig.model_validate(
        {
            "name": server.name,
            "transport": "stdio" if stdio else "streamable_http",
            "url": server.url,
            "command": list(server.command),
            "schemapin_domain": server.schemapin_domain,
            "sandboxed": stdio,
            "sandbox_tier": tier,
        }
    )


class Announcements:
    def __init__(self, registry: Registry, on_problem: Callable[[str], None]) -> None:
        self.registry = registry
        self.on_problem = on_problem
        self.known: dict[str, tuple[McpServerConfig, str, float]] = {}
        """name -> (config, origin, expiry as monotonic time; inf for none)."""

    async def subscribe(self, nc: Client) -> None:
        await nc.subscribe(subjects.TOOLS_ANNOUNCEMENTS, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        note = tools_pb2.McpServerAnnouncement()
        try:
            note.ParseFromString(msg.data)
            if note.withdrawn:
                self.known.pop(note.server.name, None)
            else:
                config = config_of(note.server)
                ttl = note.ttl.ToNanoseconds() / 1e9 if note.HasField("ttl") else 0.0
                expiry = time.monotonic() + ttl if ttl > 0 else float("inf")
                self.known[config.name] = (config, f"announcement:{note.announced_by or '?'}", expiry)
        except (DecodeError, ValidationError, ValueError) as exc:
            problem = f"announcement ignored: {exc}"
            log.warning("%s", problem)
            self.on_problem(problem)
            return
        self._apply()

    def _apply(self) -> None:
        self.registry.apply("announcement", [(c, origin) for c, origin, _ in self.known.values()])

    async def expire(self) -> None:
        """Forget servers whose announcement lapsed (a background task)."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            lapsed = [name for name, (_, _, expiry) in self.known.items() if expiry <= now]
            for name in lapsed:
                del self.known[name]
                log.info("MCP server %s: announcement lapsed", name)
            if lapsed:
                self._apply()
