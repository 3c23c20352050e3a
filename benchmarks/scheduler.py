"""Agent core: scheduling decisions at 10,000 queued tasks, 10,000 registered agents, status queries.

Measured:

- **decision**: one ``SchedulerCore.decide`` (pick the task by effective priority and
  tenant turn, choose the worker, reserve) with 10,000 tasks queued over 4 levels,
  10 tenants and 8 workers, kept at 10,000 by submitting one task per decision;
  and the worst case, a decision that finds nothing to place after trying 64
  candidates (every worker full, preemption off);
- **agents**: 10,000 agents created through ``symbi serve lifecycle`` (its own
  process, with ``symbi serve policy`` deciding ``agent_create``) by 32 concurrent
  callers: agents/s, create latency, and the memory each costs: Redis memory
  growth plus lifecycle process RSS growth, divided by the agents (the audit
  events in JetStream are reported apart);
- **status**: with those agents each given a queued task in ``symbi serve
  scheduler``, the latency of ``get_system_status``, ``get_task`` and the
  lifecycle's ``get`` over NATS.

Baselines in the same run: a naive scheduler that scans every queued task for
the highest effective priority (the obvious O(n) design) for the decision; a raw
NATS echo responder for the request latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from symbi_common import embedded, natsio, subjects
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import agent_pb2, health_pb2, sandbox_pb2, task_pb2
from symbi_scheduler.core import CoreOptions, Place, SchedulerCore

T = task_pb2
LEVELS = (T.TASK_PRIORITY_LOW, T.TASK_PRIORITY_NORMAL, T.TASK_PRIORITY_HIGH, T.TASK_PRIORITY_CRITICAL)
TIER1 = sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER
POLICY = """
id: bench
rules:
  - name: bench-creates
    effect: allow
    actions: [agent_create]
    when: subject.id == "bench"
  - name: tasks
    type: resource_usage
    effect: allow
    actions: [resource_allocate]
    require:
      limits: {memory_mb: 4096, cpu_cores: 4, execution_timeout: 1h}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Decisions -------------------------------------------------------------------------


def make_task(n: int, rng: random.Random) -> task_pb2.Task:
    task = T.Task(task_id=f"t-{n:07d}", agent_id=f"a-{n:07d}", tenant=f"tenant-{n % 10}", attempt=1, preemptible=True)
    task.priority = rng.choice(LEVELS)
    task.tier = TIER1
    task.limits.memory_mb = rng.choice((128, 256, 512, 1024))
    task.limits.cpu_cores = rng.choice((0.1, 0.25, 0.5, 1.0))
    task.limits.execution_timeout.FromSeconds(300)
    return task


def capacity(node: str, memory: int, cpu: float, slots: int) -> task_pb2.WorkerCapacity:
    report = T.WorkerCapacity(node=node, instance_id=node, sequence=1)
    report.total.memory_mb, report.total.cpu_cores, report.total.task_slots = memory, cpu, slots
    report.total.disk_io_mbps = report.total.network_io_mbps = 10_000
    report.tiers.add(tier=TIER1, available=True)
    report.report_interval.FromSeconds(3600)
    return report


def decisions(queued: int, samples: int, strategy: str) -> dict[str, float]:
    rng = random.Random(7)
    core = SchedulerCore(CoreOptions(strategy=strategy, aging_interval_s=30.0))
    for i in range(8):
        core.on_capacity(capacity(f"worker-{i}", 10**9, 10**6, 10**6), 0.0)
    counter = itertools.count()
    for _ in range(queued):
        core.submit(make_task(next(counter), rng), 0.0)
    latencies = []
    now = 1.0
    for _ in range(samples):
        now += 0.001
        started = time.perf_counter()
        decision = core.decide(now)
        latencies.append(time.perf_counter() - started)
        assert isinstance(decision, Place)
        report = T.TaskStatusReport(task_id=decision.task_id, node=decision.node, state=T.TASK_STATE_SUCCEEDED,
                                    exit_reason=T.TASK_EXIT_REASON_EXITED, sequence=1)  # fmt: skip
        core.on_report(report, now)
        core.forget(decision.task_id)
        core.submit(make_task(next(counter), rng), now)
    assert core.queue.waiting == queued
    return {"p50_us": pct(latencies, 0.5) * 1e6, "p99_us": pct(latencies, 0.99) * 1e6,
            "mean_us": statistics.fmean(latencies) * 1e6}  # fmt: skip


def no_fit_decisions(queued: int, samples: int) -> dict[str, float]:
    """The worst case: every worker full, preemption off: each decision tries 64 candidates and gives up."""
    rng = random.Random(8)
    core = SchedulerCore(CoreOptions(strategy="best_fit", preemption=False))
    for n in range(queued):
        core.submit(make_task(n, rng), 0.0)
    for i in range(8):  # workers with no room left, reporting after the tasks were queued
        core.on_capacity(capacity(f"worker-{i}", 64, 0.05, 10), 0.0)
    latencies = []
    for _ in range(samples):
        started = time.perf_counter()
        assert core.decide(1.0) is None
        latencies.append(time.perf_counter() - started)
    return {"p50_us": pct(latencies, 0.5) * 1e6, "p99_us": pct(latencies, 0.99) * 1e6}


class NaiveScheduler:
    """The obvious design: a list of queued tasks, scanned whole for the best one at every decision."""

    def __init__(self, aging_s: float) -> None:
        self.aging = aging_s
        self.queued: list[tuple[task_pb2.Task, float]] = []
        self.free = [10**9] * 8

    def decide(self, now: float) -> str:
        best_i, best_key = -1, (-1.0, 0.0)
        for i, (task, at) in enumerate(self.queued):
            key = (min(4, task.priority + (now - at) // self.aging), -at)
            if key > best_key:
                best_i, best_key = i, key
        task, _ = self.queued.pop(best_i)
        worker = next(w for w, free in enumerate(self.free) if free >= task.limits.memory_mb)
        return f"{task.task_id}@{worker}"


def naive_decisions(queued: int, samples: int) -> dict[str, float]:
    rng = random.Random(7)
    naive = NaiveScheduler(30.0)
    counter = itertools.count()
    naive.queued = [(make_task(next(counter), rng), 0.0) for _ in range(queued)]
    latencies = []
    now = 1.0
    for _ in range(samples):
        now += 0.001
        started = time.perf_counter()
        naive.decide(now)
        latencies.append(time.perf_counter() - started)
        naive.queued.append((make_task(next(counter), rng), now))
    return {"p50_us": pct(latencies, 0.5) * 1e6, "p99_us": pct(latencies, 0.99) * 1e6}


# Agents and status, against real services --------------------------------------------


def agent_text(i: int) -> str:
    return f"""
metadata {{
    name = "agent_{i:05d}"
    version = "1.0.0"
    description = "benchmark agent {i}"
}}
agent agent_{i:05d}(question: string, limit: int = 5) -> Answer {{
    capabilities = ["web_search", "read_documents", "summarize"]
    tenant = "tenant-{i % 10}"
    with sandbox = "Tier1", timeout = 30s, memory = "128MB", cpu = 0.1, priority = "normal" {{
        image = "symbi/base:bookworm"
        command = ["python3", "-c", "print('hello')"]
    }}
}}
"""


async def timed(calls: int, concurrency: int, call: Callable[[int], Awaitable[Any]]) -> tuple[list[float], float]:
    latencies: list[float] = []
    next_i = itertools.count()

    async def caller() -> None:
        while (i := next(next_i)) < calls:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def wait_healthy(nc: Any, service: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = await natsio.request(
                nc, subjects.health(service), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2
            )
            if status.status in (health_pb2.SERVING_STATUS_SERVING, health_pb2.SERVING_STATUS_DEGRADED):
                return
        except Exception:  # not up yet
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{service} did not become healthy in {timeout_s}s")


async def services(root: Path, agents: int, concurrency: int, samples: int, progress: bool) -> dict[str, Any]:
    nats = embedded.start_nats(root / "nats")
    redis_server = embedded.start_redis(root / "redis")
    policies = root / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(POLICY)
    port = embedded.free_port()
    env = {**os.environ, "SYMBI_NATS_URL": nats.url, "SYMBI_REDIS_URL": redis_server.url,
           "SYMBI_STATE_DIR": str(root / "state"), "SYMBI_METRICS_PORT": "0", "SYMBI_LOG_LEVEL": "WARNING",
           "SYMBI_POLICY_PORT": str(port), "SYMBI_POLICY_ADDR": f"127.0.0.1:{port}",
           "SYMBI_POLICY_DIR": str(policies)}  # fmt: skip
    procs = {
        name: embedded.ManagedProcess(
            name, [sys.executable, "-m", "symbi_cli", "serve", name], root / f"{name}.log", env=env
        )
        for name in ("policy", "lifecycle", "scheduler")
    }
    for proc in procs.values():
        proc.start()
    nc = await natsio.connect(NatsSettings(url=nats.url), "bench")
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        for name in procs:
            await wait_healthy(nc, name)
        lifecycle = LifecycleClient(nc, actor="bench", timeout_s=30)
        scheduler = SchedulerClient(nc, actor="bench", timeout_s=30)
        await lifecycle.create_from(_source(-1))  # warm up both services
        redis_before = int((await redis.info("memory"))["used_memory"])
        rss_before = rss_bytes(procs["lifecycle"].pid)
        ids: list[str] = [""] * agents

        async def create(i: int) -> None:
            reply = await lifecycle.create_from(_source(i))
            ids[i] = reply.agent.agent_id
            if progress and (i + 1) % 2000 == 0:
                print(f"  ... {i + 1:,} agents created", file=sys.stderr)

        create_lat, create_s = await timed(agents, concurrency, create)
        redis_after = int((await redis.info("memory"))["used_memory"])
        rss_after = rss_bytes(procs["lifecycle"].pid)
        js = nc.jetstream()
        audit_bytes = (await js.stream_info(subjects.AUDIT_STREAM)).state.bytes
        counts = await lifecycle.counts()
        assert counts.total == agents + 1, counts

        async def schedule(i: int) -> None:
            await scheduler.schedule(ids[i])

        schedule_lat, schedule_s = await timed(agents, concurrency, schedule)
        status = await scheduler.status()
        queued = sum(q.depth for q in status.queues)
        assert queued == agents, queued
        some_task = (await scheduler.list_tasks())[0].task.task_id

        async def echo(msg: Any) -> None:
            await nc.publish(msg.reply, msg.data)

        sub = await nc.subscribe("bench.echo", cb=echo)
        payload = agent_pb2.GetAgentRequest(agent_id=ids[0]).SerializeToString()
        echo_lat, _ = await timed(samples, 1, lambda _: nc.request("bench.echo", payload, timeout=5))
        await sub.unsubscribe()
        status_lat, _ = await timed(samples, 1, lambda _: scheduler.status())
        task_lat, _ = await timed(samples, 1, lambda _: scheduler.get_task(some_task))
        get_lat, _ = await timed(samples, 1, lambda i: lifecycle.get(ids[i % agents]))
        per_agent = (redis_after - redis_before + max(0, rss_after - rss_before)) / agents
        return {
            "agents": agents,
            "create_per_s": agents / create_s,
            "create_p50_ms": pct(create_lat, 0.5) * 1e3,
            "create_p99_ms": pct(create_lat, 0.99) * 1e3,
            "register_seconds": create_s,
            "bytes_per_agent": per_agent,
            "redis_bytes_per_agent": (redis_after - redis_before) / agents,
            "lifecycle_rss_growth_bytes": rss_after - rss_before,
            "audit_bytes_per_agent": audit_bytes / (agents + 1),
            "schedule_per_s": agents / schedule_s,
            "schedule_p50_ms": pct(schedule_lat, 0.5) * 1e3,
            "queued": queued,
            "status_p50_ms": pct(status_lat, 0.5) * 1e3,
            "status_p99_ms": pct(status_lat, 0.99) * 1e3,
            "get_task_p50_ms": pct(task_lat, 0.5) * 1e3,
            "get_agent_p50_ms": pct(get_lat, 0.5) * 1e3,
            "get_agent_p99_ms": pct(get_lat, 0.99) * 1e3,
            "echo_p50_ms": pct(echo_lat, 0.5) * 1e3,
        }
    finally:
        await redis.aclose()
        await nc.close()
        for proc in procs.values():
            proc.stop(20)
        redis_server.stop(5)
        nats.stop(5)


def _source(i: int) -> agent_pb2.DefinitionSource:
    text = agent_text(i) if i >= 0 else agent_text(99_999).replace("agent_99999", "warmup")
    return agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_DSL, text=text, name=f"a{i}.symbi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    if args.quick:
        args.queued, args.decisions, args.agents, args.samples, args.concurrency = 500, 500, 60, 30, 8
    by_strategy = {s: decisions(args.queued, args.decisions, s) for s in ("first_fit", "best_fit", "priority")}
    worst = no_fit_decisions(args.queued, max(100, args.decisions // 10))
    naive = naive_decisions(args.queued, max(100, args.decisions // 20))
    with tempfile.TemporaryDirectory(prefix="symbi-bench-scheduler-") as tmp:
        live = asyncio.run(services(Path(tmp), args.agents, args.concurrency, args.samples, not args.quick))
    best = by_strategy["best_fit"]
    print(f"scheduling decision with {args.queued:,} queued tasks (4 levels, 10 tenants, 8 workers):")
    for strategy, figures in by_strategy.items():
        print(f"  {strategy:<9} p50 {figures['p50_us']:.1f} µs, p99 {figures['p99_us']:.1f} µs")
    print(f"  nothing fits (64 candidates tried): p50 {worst['p50_us']:.1f} µs, p99 {worst['p99_us']:.1f} µs")
    print(f"  baseline, naive full scan: p50 {naive['p50_us']:.1f} µs ({naive['p50_us'] / best['p50_us']:.0f}x slower)")
    print(f"{live['agents']:,} agents registered through symbi serve lifecycle ({args.concurrency} callers): "
          f"{live['create_per_s']:,.0f}/s, {live['register_seconds']:.1f} s in all; "
          f"create p50 {live['create_p50_ms']:.1f} ms, p99 {live['create_p99_ms']:.1f} ms")  # fmt: skip
    print(f"  memory per agent: {live['bytes_per_agent'] / 1024:.1f} KiB (Redis "
          f"{live['redis_bytes_per_agent'] / 1024:.1f} KiB + lifecycle RSS growth "
          f"{max(0, live['lifecycle_rss_growth_bytes']) / 2**20:.1f} MiB in all); audit events in JetStream "
          f"{live['audit_bytes_per_agent'] / 1024:.1f} KiB per agent")  # fmt: skip
    print(f"  {live['queued']:,} tasks queued through symbi serve scheduler at {live['schedule_per_s']:,.0f}/s "
          f"(p50 {live['schedule_p50_ms']:.1f} ms, with the resource_allocate decision)")  # fmt: skip
    print(f"status with {live['queued']:,} queued: get_system_status p50 {live['status_p50_ms']:.2f} ms, "
          f"p99 {live['status_p99_ms']:.2f} ms; get_task p50 {live['get_task_p50_ms']:.2f} ms; "
          f"lifecycle get p50 {live['get_agent_p50_ms']:.2f} ms "
          f"(raw NATS echo {live['echo_p50_ms']:.2f} ms)")  # fmt: skip
    doc = {
        "benchmark": "scheduler",
        "decision": by_strategy,
        "decision_no_fit": worst,
        "decision_naive": naive,
        "services": live,
        "p50_ratio": best["p50_us"] / naive["p50_us"],
        "throughput_ratio": naive["p50_us"] / best["p50_us"],
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
