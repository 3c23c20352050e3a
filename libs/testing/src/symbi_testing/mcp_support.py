"""MCP test support: real MCP servers (``mcp_server.py``), signing keys, a served ``.well-known``.

- ``WellKnownServer``: an HTTP server on a free loopback port serving JSON documents
  by path (``/.well-known/schemapin.json``, revocation documents), changeable while it runs.
- ``Signer``: an ECDSA P-256 key with its discovery document, signing tools the way a
  tool publisher does (both coverages).
- ``wire_tools(config)``: the tools of the test server exactly as it sends them,
  listed in-process with the SDK's own client, so a test can sign them beforehand.
- ``HttpMcpServer``: the test server over streamable HTTP in its own process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client

from symbi_common.service import ServiceRunner, ServiceSpec
from symbi_common.settings import Settings
from symbi_common.tools_client import ToolsClient
from symbi_proto.v1 import tools_pb2
from symbi_testing import mcp_server
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

SERVER_SCRIPT = Path(mcp_server.__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WellKnownServer:
    """Serves ``documents`` (path -> JSON value) over HTTP on 127.0.0.1; ``base_url`` is the domain."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.requests: list[str] = []
        self.delay_s = 0.0
        documents, requests, owner = self.documents, self.requests, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                if self.path not in documents:
                    self.send_error(404)
                    return
                body = json.dumps(documents[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="well-known", daemon=True)
        self._thread.start()

    def publish(self, signer: Signer, *, revoked: list[str] | None = None, endpoint: str = "") -> None:
        self.documents["/.well-known/schemapin.json"] = signer.discovery(revoked=revoked, endpoint=endpoint)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def well_known() -> Iterator[WellKnownServer]:
    server = WellKnownServer()
    try:
        yield server
    finally:
        server.close()


def _canonical_digest(document: Any) -> bytes:
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).digest()


class Signer:
    """A tool publisher's key (independent of the gateway's code, so tests check it against SchemaPin)."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        public = self.private_key.public_key()
        self.public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self.private_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fingerprint = "sha256:" + hashlib.sha256(der).hexdigest()

    def discovery(self, *, revoked: list[str] | None = None, endpoint: str = "") -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": "1.2",
            "developer_name": "Symbi tests",
            "public_key_pem": self.public_pem,
        }
        if revoked:
            doc["revoked_keys"] = revoked
        if endpoint:
            doc["revocation_endpoint"] = endpoint
        return doc

    def sign(self, document: Any) -> str:
        signature = self.private_key.sign(_canonical_digest(document), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")

    def sign_tool(self, tool: Mapping[str, Any], *, descriptor: bool = True, schema: bool = True) -> dict[str, str]:
        """``{coverage: signature}`` (see docs/mcp.md for what each covers)."""
        out = {}
        if descriptor:
            out["symbi-descriptor-v1"] = self.sign(
                {
                    "symbi_descriptor": "v1",
                    "name": tool.get("name"),
                    "title": tool.get("title"),
                    "description": tool.get("description"),
                    "input_schema": tool.get("inputSchema"),
                    "output_schema": tool.get("outputSchema"),
                    "annotations": tool.get("annotations"),
                }
            )
        if schema:
            out["schema"] = self.sign(tool.get("inputSchema"))
        return out


async def wire_tools(config: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The test server's tools as it sends them on the wire (``_meta`` left out), listed in-process."""
    from mcp import Client

    async with Client(mcp_server.build(config), cache=None) as client:
        result = await client.list_tools()
    out = {}
    for tool in result.tools:
        wire = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
        wire.pop("_meta", None)
        out[tool.name] = wire
    return out


async def signed_config(signer: Signer, config: dict[str, Any] | None = None, **which: bool) -> dict[str, Any]:
    """``config`` with every tool's signatures in its ``_meta``."""
    cfg = dict(config or {})
    tools = await wire_tools(cfg)
    cfg["meta"] = {name: {"schemapin": signer.sign_tool(tool, **which)} for name, tool in tools.items()}
    return cfg


async def signatures_file(path: Path, signer: Signer, config: dict[str, Any] | None = None) -> Path:
    """An operator's signatures file for the test server's tools."""
    tools = await wire_tools(config)
    return write_config(path, {"tools": {n: signer.sign_tool(t) for n, t in tools.items()}})


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


class HttpMcpServer:
    """The test server over streamable HTTP, in its own process, ready when constructed."""

    def __init__(self, config_path: Path | None = None, *, timeout_s: float = 20.0) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            str(SERVER_SCRIPT),
            *([str(config_path)] if config_path else []),
            "--http",
            str(self.port),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError(f"the MCP test server did not listen on {self.port}") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class McpStack:
    """A gateway under test with its MCP servers, signing key and served .well-known (gateway tests)."""

    spec: ServiceSpec
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
        self.runner = await self.run_service(self.spec, self.settings.with_overrides(overrides))
        return self.runner

    async def connected(self, *names: str, timeout_s: float = 20.0) -> None:
        async def up() -> bool:
            states = {s.name: s.state for s in (await self.ops.servers()).servers}
            return all(states.get(n) == tools_pb2.MCP_SERVER_STATE_CONNECTED for n in names)

        await eventually(up, timeout_s=timeout_s, what=f"servers {names} connected")


def result_json(result: tools_pb2.ToolCallResult) -> Any:
    return json.loads(result.structured_content_json) if result.structured_content_json else None
