"""Sandbox start-to-exit: create -> start -> exit -> remove of one hardened task container, runc and runsc.

Measured: the orchestrator's Docker runner (``DockerRunner.start`` to the task's
reported exit, the container removed) running ``true`` in ``symbi/base:bookworm``
with every hardening option, under runc (Tier 1) and runsc (gVisor, Tier 2):
median and p99 over ``--runs``, cold (a new container every time) and warm (the
task handed to a container of its shape that the warm pool created and started
beforehand; the pool is given time to refill between runs, untimed).

Baseline in the same run: ``docker run --rm --runtime <rt> symbi/base:bookworm true``
from the docker CLI, the same image and runtime with no hardening and no output
following; the runner's figure is reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from symbi_common.ids import new_id
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.docker_runner import DockerRunner

IMAGE = "symbi/base:bookworm"
TIERS = {"runc": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "runsc": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def task(tier: int) -> task_pb2.Task:
    t = task_pb2.Task(task_id=new_id(), agent_id="bench", attempt=1)
    t.tier = tier  # type: ignore[assignment]
    t.limits.memory_mb, t.limits.cpu_cores = 256, 0.5  # the pool's default shape
    t.limits.execution_timeout.FromSeconds(60)
    t.spec.image = IMAGE
    t.spec.command.append("true")
    return t


async def runner_runs(runner: DockerRunner, runtime: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        execution = await runner.start(task(TIERS[runtime]))
        outcome = await execution.wait()
        assert outcome.exit_code == 0, outcome.detail
        times.append(time.perf_counter() - started)
        assert await execution.gone()  # the runner removes the container before it reports the exit
    return times


async def warm_runs(runner: DockerRunner, runtime: str, runs: int) -> tuple[list[float], int]:
    times, warm = [], 0
    for _ in range(runs):
        deadline = time.monotonic() + 60
        while not any(p.tier == TIERS[runtime] and p.ready for p in runner.warm_pools()):
            if time.monotonic() > deadline:
                raise SystemExit("the warm pool did not refill within 60 s")
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        execution = await runner.start(task(TIERS[runtime]))
        outcome = await execution.wait()
        times.append(time.perf_counter() - started)
        assert outcome.exit_code == 0, outcome.detail
        warm += execution.warm
    return times, warm


def raw_runs(runtime: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--runtime", runtime, IMAGE, "true"], check=True, timeout=120,
                       capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - started)
    return times


async def measure(runs: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="symbi-bench-sandbox-") as tmp:
        runner = DockerRunner("bench", Path(tmp) / "cold")
        pooled = DockerRunner("bench-warm", Path(tmp) / "warm", warm_size=1, warm_images=frozenset({IMAGE}))
        await runner.refresh()
        await pooled.refresh()
        missing = [rt for rt, tier in TIERS.items() if not any(t.tier == tier and t.available for t in runner.tiers())]
        if missing:
            raise SystemExit(f"the Docker engine lacks {', '.join(missing)} (run scripts/docker-setup.sh as root)")
        out: dict[str, dict[str, float]] = {}
        try:
            for runtime in TIERS:
                await runner_runs(runner, runtime, 2)  # warm the image cache and the runtime
                ours = await runner_runs(runner, runtime, runs)
                warm, hits = await warm_runs(pooled, runtime, runs)
                raw = raw_runs(runtime, runs)
                out[runtime] = {
                    "warm_p50_ms": pct(warm, 0.5) * 1e3,
                    "warm_p99_ms": pct(warm, 0.99) * 1e3,
                    "warm_hits": hits,
                    "p50_ms": pct(ours, 0.5) * 1e3,
                    "p99_ms": pct(ours, 0.99) * 1e3,
                    "mean_ms": statistics.fmean(ours) * 1e3,
                    "raw_p50_ms": pct(raw, 0.5) * 1e3,
                    "raw_p99_ms": pct(raw, 0.99) * 1e3,
                }
        finally:
            await runner.close()
            await pooled.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if args.quick:
        args.runs = 2
    figures = asyncio.run(measure(args.runs))
    print(f"create -> start -> exit -> remove of `true` in {IMAGE}, {args.runs} runs each:")
    for runtime, f in figures.items():
        print(f"  {runtime:<6} cold p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms; "
              f"warm p50 {f['warm_p50_ms']:.0f} ms, p99 {f['warm_p99_ms']:.0f} ms "
              f"({f['p50_ms'] / f['warm_p50_ms']:.1f}x faster, {f['warm_hits']}/{args.runs} warm); "
              f"raw `docker run --rm` p50 {f['raw_p50_ms']:.0f} ms ({f['p50_ms'] / f['raw_p50_ms']:.2f}x)")  # fmt: skip
    runc, runsc = figures["runc"], figures["runsc"]
    print(f"  gVisor costs {runsc['p50_ms'] / runc['p50_ms']:.2f}x runc at the median")
    doc = {
        "benchmark": "sandbox",
        "runs": args.runs,
        "runtimes": figures,
        "p50_ratio": runc["p50_ms"] / runc["raw_p50_ms"],
        "throughput_ratio": runc["raw_p50_ms"] / runc["p50_ms"],
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
