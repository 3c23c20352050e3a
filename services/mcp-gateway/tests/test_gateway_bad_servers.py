"""Servers that are down, hang, crash, send malformed JSON-RPC or oversized messages, or invalid
schemas: each is contained with a clear reason, reconnects with backoff, and the others keep serving."""

from __future__ import annotations

import json
import sys

import pytest
from symbi_testing.checks import eventually
from symbi_testing.mcp_support import SERVER_SCRIPT, McpStack, free_port, result_json, signed_config

from symbi_proto.v1 import tools_pb2 as T

pytestmark = pytest.mark.integration


async def detail_of(mcp: McpStack, name: str) -> T.McpServer:
    return next(s for s in (await mcp.ops.servers()).servers if s.name == name)


async def good_still_serves(mcp: McpStack) -> None:
    result = await mcp.ops.call("good", "add", {"a": 1, "b": 2})
    assert result_json(result) == {"result": 3}, result.error


async def test_down_and_hanging_servers_do_not_affect_the_others(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer)
    down = {"name": "down", "transport": "streamable_http", "url": f"http://127.0.0.1:{free_port()}/mcp"}
    missing = {"name": "missing", "command": ["/nonexistent/mcp-server"]}
    await mcp.start([mcp.stdio("good", config), down, missing, mcp.stdio("hangs", {"hang": True})],
                    connection_timeout_s=1.0)  # fmt: skip
    await mcp.connected("good")
    await good_still_serves(mcp)

    async def reported() -> bool:
        states = {s.name: s for s in (await mcp.ops.servers()).servers}
        return all(states[n].state == T.MCP_SERVER_STATE_DISCONNECTED for n in ("down", "missing", "hangs"))

    await eventually(reported, timeout_s=15, what="the bad servers reported disconnected")
    assert "connect" in (await detail_of(mcp, "down")).detail
    assert "cannot start '/nonexistent/mcp-server'" in (await detail_of(mcp, "missing")).detail
    assert "no answer to the handshake within 1s" in (await detail_of(mcp, "hangs")).detail
    await eventually(lambda: _attempts(mcp, "down"), timeout_s=10, what="reconnect attempts")
    listing = await mcp.ops.list_tools()
    assert {s.name for s in listing.unavailable_servers} == {"down", "missing", "hangs"}
    refused = await mcp.ops.call("down", "add", {"a": 1, "b": 2})
    assert refused.error.code == "unavailable"
    await good_still_serves(mcp)
    health = mcp.runner.health  # type: ignore[union-attr]
    servers = (await health.snapshot()).components
    check = next(c for c in servers if c.name == "servers")
    assert "1/4 servers connected" in check.detail


async def _attempts(mcp: McpStack, name: str) -> bool:
    return (await detail_of(mcp, name)).reconnect_attempts >= 2


async def test_malformed_json_rpc_resets_the_connection_which_comes_back(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("good", config), mcp.stdio("bad", config)])
    await mcp.connected("good", "bad")
    broken = await mcp.ops.call("bad", "garbage")
    assert broken.error.code == "unavailable"
    assert "not JSON-RPC" in broken.error.message
    await good_still_serves(mcp)
    await mcp.connected("bad")
    assert result_json(await mcp.ops.call("bad", "add", {"a": 2, "b": 2})) == {"result": 4}


async def test_an_oversized_message_is_refused_without_buffering_it(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("good", config), mcp.stdio("bad", config)], max_message_bytes=65536)
    await mcp.connected("good", "bad")
    huge = await mcp.ops.call("bad", "big", {"n": 1_000_000})
    assert huge.error.code == "unavailable"
    assert "larger than 65536 bytes" in huge.error.message
    await good_still_serves(mcp)
    await mcp.connected("bad")


async def test_a_crashed_server_is_restarted(mcp: McpStack, tmp_path: object) -> None:
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("good", config)])
    await mcp.connected("good")
    runner = mcp.runner
    assert runner is not None
    assert runner.ctx is not None
    # Kill the server process behind the gateway's back: the gateway notices and starts it again.
    import os
    import signal

    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_server(int(p), mcp)]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    async def restarted() -> bool:
        server = await detail_of(mcp, "good")
        return (
            server.state == T.MCP_SERVER_STATE_CONNECTED
            and server.reconnect_attempts == 0
            and bool([p for p in os.listdir("/proc") if p.isdigit() and _is_server(int(p), mcp) and int(p) not in pids])
        )

    await eventually(restarted, timeout_s=15, what="the server restarted")
    await good_still_serves(mcp)


def _is_server(pid: int, mcp: McpStack) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return str(SERVER_SCRIPT).encode() in argv and str(mcp.tmp / "good.json").encode() in argv


async def test_tools_with_invalid_schemas_are_refused_and_the_rest_offered(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer, {"bad_schema": True})
    await mcp.start([mcp.stdio("good", config)])
    await mcp.connected("good")
    offered = {t.name for t in (await mcp.ops.list_tools("good")).tools}
    assert "bad_schema" not in offered
    assert "add" in offered
    every = {t.name: t for t in (await mcp.ops.list_tools("good", include_unverified=True)).tools}
    assert "not valid JSON Schema at properties/x/type" in every["bad_schema"].verification.detail
    assert not every["bad_schema"].verification.offered
    assert (await mcp.ops.call("good", "bad_schema")).error.code == "failed_precondition"


async def test_connection_slots_are_honoured(mcp: McpStack) -> None:
    config = await signed_config(mcp.signer)
    await mcp.start([mcp.stdio("good", config), mcp.stdio("second", config)], max_concurrent_connections=1)
    await mcp.connected("good")
    second = await detail_of(mcp, "second")
    assert second.state == T.MCP_SERVER_STATE_CONNECTING
    assert second.detail == "waiting for a connection slot"


def test_the_test_server_is_a_real_stdio_mcp_server() -> None:
    # Guard for the suite itself: the command the tests configure is runnable as written.
    assert json.loads(json.dumps([sys.executable, str(SERVER_SCRIPT)]))[1].endswith("mcp_server.py")
