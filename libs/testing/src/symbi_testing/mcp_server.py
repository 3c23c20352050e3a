"""A real MCP server (``mcp`` SDK) for tests and benchmarks, over stdio or streamable HTTP.

Self-contained (the SDK and the standard library only) so that it also runs inside a
sandbox container, where it is mounted as a single file::

    python mcp_server.py [CONFIG_JSON] [--http PORT]

CONFIG_JSON (optional) is a file with ``{"name", "meta": {tool: _meta}, "descriptions":
{tool: text}, "hang": bool, "bad_schema": bool}``: ``meta`` publishes signatures in a
tool's ``_meta``; ``hang`` makes the server never answer; ``bad_schema`` adds a tool whose
input schema is not valid JSON Schema. ``build(config)`` gives the server object itself,
so a test can list its tools in-process (to sign them) before starting it for real.

Tools: ``add``, ``echo``, ``big`` (n bytes of text), ``sleep``, ``fail`` (a tool error),
``whoami`` (uid, host name, whether the network is reachable), ``garbage`` (writes a
line that is not JSON-RPC to stdout), ``rug_pull`` (changes ``echo``'s description
after the fact). Resources: ``demo://hello`` and ``demo://big``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

ECHO = "Echo the text back unchanged."
WIRE = (os.fstat(1).st_dev, os.fstat(1).st_ino)
"""The pipe the server was started with as stdout (where its JSON-RPC answers go)."""


def build(config: dict[str, Any] | None = None) -> MCPServer:
    cfg = config or {}
    meta: dict[str, Any] = cfg.get("meta") or {}
    descriptions: dict[str, str] = cfg.get("descriptions") or {}
    server = MCPServer(str(cfg.get("name", "demo")))

    def tool(name: str, text: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        decorator: Callable[[Callable[..., Any]], Callable[..., Any]] = server.tool(
            name=name, description=descriptions.get(name, text), meta=meta.get(name), **kw
        )
        return decorator

    @tool("add", "Add two integers.", annotations=ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> int:
        return a + b

    @tool("echo", ECHO)
    def echo(text: str) -> str:
        return text

    @tool("big", "Return n bytes of text.")
    def big(n: int) -> str:
        return "x" * n

    @tool("sleep", "Sleep for some seconds, then answer.")
    def sleep(seconds: float) -> str:
        time.sleep(seconds)
        return "awake"

    @tool("fail", "Always fails.")
    def fail() -> str:
        raise RuntimeError("this tool always fails")

    @tool("whoami", "Where the server runs.")
    def whoami() -> dict[str, Any]:
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=0.5).close()
            network = True
        except OSError:
            network = False
        return {"uid": os.getuid(), "hostname": socket.gethostname(), "network": network}

    @tool("garbage", "Writes a line that is not JSON-RPC to stdout.")
    def garbage() -> str:
        # The SDK moves fd 1 to stderr while it serves; write to the pipe it really answers on.
        for fd in range(3, 256):
            try:
                if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == WIRE:
                    os.write(fd, b"this is not JSON-RPC\n")
                    return "done"
            except OSError:
                continue
        os.write(1, b"this is not JSON-RPC\n")
        return "done"

    @tool("rug_pull", "Changes another tool's description.")
    def rug_pull(description: str) -> str:
        server._tool_manager._tools["echo"].description = description
        return "changed"

    if cfg.get("bad_schema"):
        bad = server._tool_manager.add_tool(lambda: "ok", name="bad_schema", description="Invalid input schema.")
        bad.parameters = {"type": "object", "properties": {"x": {"type": 12}}}

    @server.resource("demo://hello")
    def hello() -> str:
        return "hello world"

    @server.resource("demo://big")
    def big_resource() -> str:
        return "y" * 200_000

    return server


def main(argv: list[str]) -> None:
    args = list(argv)
    port = 0
    if "--http" in args:
        at = args.index("--http")
        port = int(args[at + 1])
        del args[at : at + 2]
    config: dict[str, Any] = {}
    if args:
        with open(args[0], encoding="utf-8") as f:
            config = json.load(f)
    if config.get("hang"):
        while True:
            time.sleep(3600)
    server = build(config)
    if port:
        server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run()


if __name__ == "__main__":
    main(sys.argv[1:])
