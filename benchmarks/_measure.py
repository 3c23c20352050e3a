"""Request latency and throughput of one async call, shared by the request-reply benchmarks."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable


async def measure(
    call: Callable[[], Awaitable[object]], requests: int, concurrency: int, *, warmup: int
) -> dict[str, float]:
    """Sequential p50/p99 (µs) over ``requests`` calls, then requests/s with ``concurrency`` callers."""
    for _ in range(min(warmup, requests)):
        await call()
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1e6,
        "throughput_rps": (requests // concurrency) * concurrency / elapsed,
    }
