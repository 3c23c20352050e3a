"""The scenarios' MCP server: tools a research lab and a security team might offer agents.

Runs over stdio with the ``mcp`` SDK alone (standard library otherwise), so the MCP
gateway can start it inside a sandbox container (see ../symbi.toml). Its tools are
signed by the lab's publisher key (``signatures.json``, key in ``keys/``): the
gateway offers them only once the signatures verify.
"""

from __future__ import annotations

import re

from mcp.server.mcpserver import MCPServer

server = MCPServer("lab-tools")


@server.tool(name="word_count", description="Count the words and sentences of a text.")
def word_count(text: str) -> dict[str, int]:
    words = re.findall(r"[A-Za-z0-9']+", text)
    sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
    return {"words": len(words), "sentences": len(sentences)}


@server.tool(name="port_scan", description="Probe a network range for open ports (intrusive).")
def port_scan(target: str, ports: str = "1-1024") -> str:
    # Policy refuses this call before it gets here; in a sandbox there is no network anyway.
    return f"would scan {target} ports {ports}"


if __name__ == "__main__":
    server.run("stdio")
