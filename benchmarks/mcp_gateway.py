"""MCP gateway: overhead of a tool call through the gateway, and SchemaPin verification time per tool.

Measured, in one run on embedded NATS and Redis:

- **Through the gateway**: ``symbi serve policy`` and ``symbi serve mcp-gateway`` in their
  own processes; the gateway connects to the test MCP server (``symbi_testing/mcp_server.py``,
  the ``mcp`` SDK, over stdio) whose tools are signed (descriptor coverage) and verified
  against a served ``.well-known`` (done once, at listing: calls use the cached verdict).
  Each call is a NATS request (``symbi.tools.call``): policy decision over gRPC (no
  decision cache), a Redis rate-limit bucket, argument validation, the call, result
  hashing, two audit events (buffered into JetStream). ``add`` with two integers.
- **Baseline, same run**: a direct ``mcp`` SDK client calling ``add`` on another process of
  the same server over stdio. The gateway's figure is reported as a ratio to it, and the
  overhead as the difference of medians.
- **Verification per tool**: the gateway's ``Verifier`` on a listed tool: the signature check
  alone (ECDSA P-256 over the canonical descriptor), a full first verification (key from the
  served ``.well-known`` already cached, pin read from Redis) and a repeated one (cached check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from symbi_testing.mcp_support import SERVER_SCRIPT, Signer, WellKnownServer, signed_config, wire_tools, write_config

from symbi_common import embedded, natsio
from symbi_common.settings import NatsSettings
from symbi_common.tools_client import ToolsClient
from symbi_mcp_gateway import signatures
from symbi_mcp_gateway.keys import KeyDirectory
from symbi_mcp_gateway.pins import RedisPinStore
from symbi_mcp_gateway.verification import Verifier
from symbi_proto.v1 import tools_pb2

POLICY = """
id: bench-tools
rules:
  - name: operators-call
    effect: allow
    actions: [tool_invoke]
    when: subject.kind == "user" and subject.roles contains "operator"
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3, "per_s": len(times) / sum(times)}  # fmt: skip


async def timed(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return times


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_toml(path: Path, server_config: Path, domain: str, policies: Path) -> None:
    command = json.dumps([sys.executable, str(SERVER_SCRIPT), str(server_config)])
    path.write_text(
        f"[policy]\ndirectory = {json.dumps(str(policies))}\n\n"
        "[mcp]\ntool_calls_per_minute = 100000000\n\n"
        f'[[mcp.servers]]\nname = "bench"\ncommand = {command}\nschemapin_domain = "{domain}"\n'
    )


async def wait_for_tools(tools: ToolsClient, processes: list[Process], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in processes:
            if p.proc.poll() is not None:
                raise SystemExit(f"{p.log.name} exited:\n{p.log.read_text()[-3000:]}")
        try:
            listing = await tools.list_tools("bench")
            if any(t.name == "add" for t in listing.tools):
                return
        except Exception:  # not serving yet
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the gateway did not offer the benchmark server's tools in time")


async def through_gateway(state: Path, calls: int, site: WellKnownServer, server_config: Path) -> dict[str, float]:
    nats = embedded.start_nats(state / "nats")
    redis = embedded.start_redis(state / "redis")
    processes: list[Process] = []
    try:
        policies = state / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(POLICY)
        config = state / "symbi.toml"
        write_toml(config, server_config, site.base_url, policies)
        port = embedded.free_port()
        env = {**os.environ, "SYMBI_CONFIG_PATH": str(config), "SYMBI_NATS_URL": nats.url,
               "SYMBI_REDIS_URL": redis.url, "SYMBI_POLICY_PORT": str(port), "SYMBI_POLICY_ADDR": f"127.0.0.1:{port}",
               "SYMBI_METRICS_PORT": "0", "SYMBI_STATE_DIR": str(state / "symbi"),
               "SYMBI_LOG_LEVEL": "WARNING"}  # fmt: skip
        for service in ("policy", "mcp-gateway"):
            argv = [sys.executable, "-m", "symbi_cli", "serve", service]
            processes.append(Process(argv, env, state / f"{service}.log"))
        nc = await natsio.connect(NatsSettings(url=nats.url, connect_timeout_s=30), "bench-mcp")
        try:
            tools = ToolsClient(nc, timeout_s=30, actor="bench", roles=("operator",))
            await wait_for_tools(tools, processes)

            async def call() -> None:
                result = await tools.call("bench", "add", {"a": 1, "b": 2})
                if result.HasField("error"):
                    raise SystemExit(f"gateway call failed: {result.error}")

            await timed(call, max(20, calls // 10))  # warm up connections and code paths
            out = summary(await timed(call, calls))
            started = time.perf_counter()
            await asyncio.gather(*(timed(call, calls // 8 or 1) for _ in range(8)))
            out["concurrent_per_s"] = 8 * (calls // 8 or 1) / (time.perf_counter() - started)
            return out
        finally:
            await nc.close()
    finally:
        for p in processes:
            p.stop()
        redis.stop()
        nats.stop()


async def direct(calls: int, server_config: Path) -> dict[str, float]:
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER_SCRIPT), str(server_config)])
    async with Client(params, cache=None) as client:

        async def call() -> None:
            result = await client.call_tool("add", {"a": 1, "b": 2})
            assert not result.is_error

        await timed(call, max(20, calls // 10))
        return summary(await timed(call, calls))


async def verification(state: Path, site: WellKnownServer, signer: Signer, rounds: int) -> dict[str, float]:
    redis = embedded.start_redis(state / "redis-verify")
    client = aioredis.Redis.from_url(redis.url, socket_timeout=5)
    keys = KeyDirectory(cache_s=3600)
    try:
        tools = await wire_tools()
        tool = {**tools["add"], "_meta": {"schemapin": signer.sign_tool(tools["add"])}}
        key = signatures.load_public_key(signer.public_pem)
        document = signatures.descriptor_document(tool)
        signature = tool["_meta"]["schemapin"][signatures.DESCRIPTOR_V1]
        started = time.perf_counter()
        for _ in range(rounds):
            assert signatures.verify(document, signature, key)
        crypto_us = (time.perf_counter() - started) / rounds * 1e6
        await keys.resolve(site.base_url)  # discovery fetched once; what follows is per tool
        first: list[float] = []
        for i in range(rounds):
            verifier = Verifier("strict", keys, RedisPinStore(client, key=f"bench:pins:{i}"))
            started = time.perf_counter()
            verdict = await verifier.verify("bench", site.base_url, tool)
            first.append(time.perf_counter() - started)
            assert verdict.status == tools_pb2.VERIFICATION_STATUS_VERIFIED, verdict.detail
        verifier = Verifier("strict", keys, RedisPinStore(client, key="bench:pins:repeat"))
        await verifier.verify("bench", site.base_url, tool)
        again = await timed(lambda: verifier.verify("bench", site.base_url, tool), rounds)
        return {"signature_check_us": crypto_us, "first_verify_p50_us": pct(first, 0.5) * 1e6,
                "repeat_verify_p50_us": pct(again, 0.5) * 1e6}  # fmt: skip
    finally:
        await keys.close()
        await client.aclose()
        redis.stop()


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="symbi-bench-mcp-") as tmp:
        state = Path(tmp)
        site = WellKnownServer()
        signer = Signer()
        site.publish(signer)
        try:
            server_config = write_config(state / "server.json", await signed_config(signer))
            baseline = await direct(calls, server_config)
            gateway = await through_gateway(state, calls, site, server_config)
            verify = await verification(state, site, signer, rounds)
        finally:
            site.close()
    return {"gateway": gateway, "direct": baseline, "verification": verify}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200, help="verifications measured")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 40, 10
    figures = asyncio.run(measure(args.calls, args.rounds))
    g, d, v = figures["gateway"], figures["direct"], figures["verification"]
    overhead = g["p50_ms"] - d["p50_ms"]
    print(f"tool call `add` over stdio, {args.calls} sequential calls each:")
    print(f"  {'path':<28}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}")
    print(f"  {'direct mcp SDK client':<28}{d['p50_ms']:>9.2f}{d['p99_ms']:>9.2f}{d['per_s']:>10.0f}")
    print(f"  {'through the gateway (NATS)':<28}{g['p50_ms']:>9.2f}{g['p99_ms']:>9.2f}{g['per_s']:>10.0f}")
    print(f"  gateway overhead at the median: {overhead:.2f} ms ({g['p50_ms'] / d['p50_ms']:.2f}x the direct call); "
          f"8 callers at once: {g['concurrent_per_s']:.0f} calls/s")  # fmt: skip
    print(f"verification per tool ({args.rounds} rounds): signature check {v['signature_check_us']:.0f} us, "
          f"first verification {v['first_verify_p50_us']:.0f} us (with its pin written), "
          f"repeated {v['repeat_verify_p50_us']:.0f} us (check cached)")  # fmt: skip
    doc = {
        "benchmark": "mcp_gateway",
        "calls": args.calls,
        **{f"gateway_{k}": round(x, 4) for k, x in g.items()},
        **{f"direct_{k}": round(x, 4) for k, x in d.items()},
        **{k: round(x, 2) for k, x in v.items()},
        "overhead_p50_ms": round(overhead, 4),
        "p50_ratio": g["p50_ms"] / d["p50_ms"],
        "throughput_ratio": g["per_s"] / d["per_s"],
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
