"""The HTTP API's overhead: one read through the API against the same NATS request made directly.

Runs NATS, Redis, the audit service and the API in this process's event loop, and
asks for the audit log's signing keys two ways: ``GET /v1/audit/keys`` over HTTP
(API key check in Redis, the per-key rate limit, the request id, span, metrics,
JSON) and ``symbi.auditq.keys`` over NATS with the typed client (what the API does
behind the route). Prints p50/p99 latency (sequential) and throughput (concurrent)
for both and the ratio of the API to NATS. The HTTP client shares the loop with the
server, so the API's throughput here is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import httpx
from _measure import measure

from symbi_api.keys import KeySpec, KeyStore
from symbi_api.service import SPEC as API
from symbi_audit.service import SPEC as AUDIT
from symbi_common import embedded, natsio, redisio, subjects
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_proto.v1 import audit_pb2


async def run(
    requests: int, concurrency: int, state: Path, nats_url: str, redis_url: str
) -> dict[str, dict[str, float]]:
    settings = Settings.model_validate(
        {"runtime": {"state_dir": state, "log_level": "WARNING"}, "nats": {"url": nats_url},
         "redis": {"url": redis_url}, "api": {"port": 0, "bootstrap_admin": False},
         "telemetry": {"metrics_port": 0}, "audit": {"fsync": "off"}}
    )  # fmt: skip
    runners = [ServiceRunner(AUDIT, settings), ServiceRunner(API, settings)]
    for runner in runners:
        await runner.start()
    redis = await redisio.connect(redis_url)
    nc = await natsio.connect(settings.nats, "bench-client")
    try:
        spec = KeySpec("bench", ["audit:read"], rate_limit_per_minute=100_000_000)
        _, token = await KeyStore(redis).create(spec, created_by="bench")
        assert runners[1].ctx is not None
        url = runners[1].ctx.health.endpoints["http"]
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits) as http:

            async def direct() -> object:
                request = audit_pb2.ListSigningKeysRequest()
                return await natsio.request(
                    nc, subjects.AUDIT_KEYS, request, audit_pb2.ListSigningKeysResponse, timeout=5
                )

            async def through_api() -> object:
                response = await http.get("/v1/audit/keys", timeout=5)
                response.raise_for_status()
                return response.json()

            return {
                "nats request": await measure(direct, requests, concurrency, warmup=100),
                "http api": await measure(through_api, requests, concurrency, warmup=100),
            }
    finally:
        await nc.close()
        await redis.aclose()
        for runner in reversed(runners):
            await runner.shutdown()


def report(results: dict[str, dict[str, float]]) -> dict[str, object]:
    base, ours = results["nats request"], results["http api"]
    print(f"{'':<14}{'p50 µs':>10}{'p99 µs':>10}{'req/s':>12}")
    for name, figures in results.items():
        print(f"{name:<14}{figures['p50_us']:>10.0f}{figures['p99_us']:>10.0f}{figures['throughput_rps']:>12.0f}")
    ratios = {
        "p50_ratio": ours["p50_us"] / base["p50_us"],
        "throughput_ratio": ours["throughput_rps"] / base["throughput_rps"],
        "overhead_p50_us": ours["p50_us"] - base["p50_us"],
    }
    print(f"api/nats: p50 x{ratios['p50_ratio']:.2f} (+{ratios['overhead_p50_us']:.0f} µs), "
          f"throughput x{ratios['throughput_ratio']:.2f}")  # fmt: skip
    doc = {"benchmark": "api", "results": results, **ratios}
    print("BENCH " + json.dumps(doc))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a smoke run (tiny counts)")
    args = parser.parse_args()
    requests, concurrency = (40, 4) if args.quick else (args.requests, args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        nats = embedded.start_nats(Path(tmp) / "nats")
        redis = embedded.start_redis(Path(tmp) / "redis")
        try:
            report(asyncio.run(run(requests, concurrency, Path(tmp) / "state", nats.url, redis.url)))
        finally:
            redis.stop(5)
            nats.stop(5)


if __name__ == "__main__":
    main()
