"""NATS request-reply: Symbi's typed helper against raw nats-py, same server, same run.

Prints p50/p99 latency (sequential) and throughput (concurrent) for both, and the
ratio of ours to raw. Starts its own nats-server on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from _measure import measure
from nats.aio.client import Client
from nats.aio.msg import Msg

from symbi_common import embedded, natsio
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import health_pb2

PAYLOAD = health_pb2.HealthStatus(service="bench", instance_id="x" * 64, version="0.1.0")


async def run(requests: int, concurrency: int, url: str) -> dict[str, dict[str, float]]:
    settings = NatsSettings(url=url)
    server_nc = await natsio.connect(settings, "bench-server")
    client_nc: Client = await natsio.connect(settings, "bench-client")
    try:

        async def typed_handler(req: health_pb2.HealthRequest, meta: natsio.RequestMeta) -> health_pb2.HealthStatus:
            return PAYLOAD

        async def raw_handler(msg: Msg) -> None:
            await msg.respond(PAYLOAD.SerializeToString())

        await natsio.serve(server_nc, "bench.typed", health_pb2.HealthRequest, typed_handler)
        await server_nc.subscribe("bench.raw", cb=raw_handler)
        await server_nc.flush()
        request = health_pb2.HealthRequest().SerializeToString()

        async def raw() -> object:
            reply = await client_nc.request("bench.raw", request, timeout=5)
            return health_pb2.HealthStatus.FromString(reply.data)

        async def typed() -> object:
            return await natsio.request(
                client_nc, "bench.typed", health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=5
            )

        return {
            "raw nats-py": await measure(raw, requests, concurrency, warmup=200),
            "symbi natsio": await measure(typed, requests, concurrency, warmup=200),
        }
    finally:
        await client_nc.close()
        await server_nc.close()


def report(results: dict[str, dict[str, float]]) -> dict[str, object]:
    raw, ours = results["raw nats-py"], results["symbi natsio"]
    print(f"{'':<14}{'p50 µs':>10}{'p99 µs':>10}{'req/s':>12}")
    for name, figures in results.items():
        print(f"{name:<14}{figures['p50_us']:>10.0f}{figures['p99_us']:>10.0f}{figures['throughput_rps']:>12.0f}")
    ratios = {
        "p50_ratio": ours["p50_us"] / raw["p50_us"],
        "throughput_ratio": ours["throughput_rps"] / raw["throughput_rps"],
    }
    print(f"symbi/raw: p50 x{ratios['p50_ratio']:.2f}, throughput x{ratios['throughput_ratio']:.2f}")
    doc = {"benchmark": "natsio_rpc", "results": results, **ratios}
    print("BENCH " + json.dumps(doc))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = embedded.start_nats(Path(tmp))
        try:
            report(asyncio.run(run(args.requests, args.concurrency, server.url)))
        finally:
            server.stop(5)


if __name__ == "__main__":
    main()
