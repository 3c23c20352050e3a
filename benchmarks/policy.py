"""Policy decisions: in-process, over gRPC (sequential, concurrent, batched), and update propagation.

Baselines measured in the same run:

- **Cedar** (``cedarpy``, the Rust engine behind AWS Verified Permissions) on the
  same rule set written in Cedar, with pre-parsed policy and entity handles, so
  in-process throughput is reported as a ratio to an established engine. Both
  engines decide every benchmark request and must agree (printed).
- **A no-op PolicyService** (``_noop_policy_server.py``) answering a fixed allow:
  the floor of gRPC + protobuf + asyncio here, for the gRPC latency ratio.

The real service runs as ``symbi serve policy`` in its own process on an embedded
nats-server, with decision auditing on (every decision is queued to JetStream);
the run ends by counting the decision events in the AUDIT stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
import grpc
from symbi_testing.streams import audit_events

from symbi_common import embedded, natsio
from symbi_common.policy_client import PolicyClient, Principal, Target, request
from symbi_common.settings import NatsSettings
from symbi_policy.compiler import compile_sources
from symbi_policy.engine import PolicySet
from symbi_proto.v1 import policy_pb2

HERE = Path(__file__).resolve().parent
AGENTS = 50


def rule_set(n: int) -> tuple[str, str]:
    """``n`` rules as a Symbi policy and as Cedar: every tenth denies admin tools without the admin role."""
    ours, cedar = ["id: bench", "rules:"], []
    for i in range(n):
        if i % 10 == 0:
            ours.append(
                f"  - {{name: r{i}, effect: deny, actions: [tool_invoke], resources: ['tool:server{i}/admin*'], "
                "when: 'not (subject.roles contains \"admin\")'}"
            )
            cedar.append(
                f'forbid(principal, action == Action::"tool_invoke", resource) when {{ resource.name like '
                f'"server{i}/admin*" }} unless {{ principal.roles.contains("admin") }};'
            )
        else:
            ours.append(
                f"  - {{name: r{i}, effect: allow, actions: [tool_invoke], resources: ['tool:server{i}/*'], "
                f"when: 'subject.capabilities contains \"cap{i}\"'}}"
            )
            cedar.append(
                f'permit(principal, action == Action::"tool_invoke", resource) when {{ resource.name like '
                f'"server{i}/*" && principal.capabilities.contains("cap{i}") }};'
            )
    return "\n".join(ours) + "\n", "\n".join(cedar)


def workload(
    n_rules: int, count: int, seed: int = 7
) -> tuple[list[policy_pb2.EvaluateRequest], list[dict[str, Any]], Any]:
    rng = random.Random(seed)
    agents = []
    for a in range(AGENTS):
        caps = sorted({f"cap{rng.randrange(n_rules)}" for _ in range(max(3, n_rules // 5))})
        roles = ["admin"] if a % 7 == 0 else []
        agents.append((f"agent{a}", caps, roles))
    ours, cedar_requests, tools = [], [], set()
    for _ in range(count):
        name, caps, roles = agents[rng.randrange(AGENTS)]
        server = rng.randrange(n_rules)
        tool = f"server{server}/{rng.choice(['read', 'write', 'admin-reset'])}"
        tools.add(tool)
        ours.append(
            request(
                "tool_invoke",
                Principal("agent", name, capabilities=caps, roles=roles),
                Target("tool", tool),
                operation="call",
            )
        )
        cedar_requests.append(
            {
                "principal": f'Agent::"{name}"',
                "action": 'Action::"tool_invoke"',
                "resource": f'Tool::"{tool}"',
                "context": {},
            }
        )
    entities = [
        {"uid": {"__entity": {"type": "Agent", "id": n}}, "attrs": {"capabilities": c, "roles": r}, "parents": []}
        for n, c, r in agents
    ]
    entities += [
        {"uid": {"__entity": {"type": "Tool", "id": t}}, "attrs": {"name": t}, "parents": []} for t in sorted(tools)
    ]
    return ours, cedar_requests, cedarpy.Entities.from_json_str(json.dumps(entities))


def rate(fn: Callable[[], object], items: int, min_s: float) -> float:
    """Items per second of ``fn`` (which processes ``items``), repeated for at least ``min_s``."""
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s:
            return runs * items / elapsed


def in_process(n_rules: int, count: int, min_s: float) -> dict[str, float]:
    ours_text, cedar_text = rule_set(n_rules)
    (compiled,) = compile_sources(ours_text, "bench.yaml")
    policies = PolicySet(1, {compiled.id: compiled})
    cedar_policies = cedarpy.PolicySet.from_str(cedar_text)
    requests, cedar_requests, entities = workload(n_rules, count)
    ours_allowed = [policies.decide(r).outcome != "deny" for r in requests]
    cedar_allowed = [cedarpy.is_authorized(r, cedar_policies, entities).allowed for r in cedar_requests]
    agree = sum(a == b for a, b in zip(ours_allowed, cedar_allowed, strict=True)) / count

    def each(decide: Callable[[Any], object], items: list[Any]) -> Callable[[], None]:
        def run() -> None:
            for item in items:  # each decision is used and dropped, as an enforcement point does
                decide(item)

        return run

    def cedar_one(item: dict[str, Any]) -> object:
        return cedarpy.is_authorized(item, cedar_policies, entities)

    return {
        "rules": n_rules,
        "agreement": agree,
        "allowed_share": sum(ours_allowed) / count,
        "ours_decide_per_s": rate(each(policies.decide, requests), count, min_s),
        "ours_evaluate_per_s": rate(each(policies.evaluate, requests), count, min_s),
        "cedar_per_s": rate(each(cedar_one, cedar_requests), count, min_s),
        "cedar_batch_per_s": rate(
            lambda: cedarpy.is_authorized_batch(cedar_requests, cedar_policies, entities), count, min_s
        ),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def sequential(client: PolicyClient, requests: list[policy_pb2.EvaluateRequest], n: int) -> dict[str, float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        decision = await client.evaluate(requests[i % len(requests)])
        latencies.append(time.perf_counter() - started)
        if decision.deny.kind == policy_pb2.DENY_KIND_UNAVAILABLE:
            raise SystemExit(f"policy service unavailable: {decision.deny.reason}")
    return {"p50_ms": statistics.median(latencies) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3}


async def concurrent(client: PolicyClient, requests: list[policy_pb2.EvaluateRequest], n: int, workers: int) -> float:
    async def worker(offset: int) -> None:
        for i in range(offset, n, workers):
            await client.evaluate(requests[i % len(requests)])

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return n / (time.perf_counter() - started)


async def batched(client: PolicyClient, requests: list[policy_pb2.EvaluateRequest], batches: int, size: int) -> float:
    batch = (requests * (size // len(requests) + 1))[:size]
    started = time.perf_counter()
    for _ in range(batches):
        decisions = await client.evaluate_batch(batch)
        assert len(decisions) == size
    return batches * size / (time.perf_counter() - started)


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


async def wait_serving(addr: str, what: str, process: Process, timeout_s: float = 60) -> PolicyClient:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise SystemExit(f"{what} exited:\n{process.log.read_text()[-2000:]}")
        async with grpc.aio.insecure_channel(addr) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 1.0)
            except TimeoutError:
                continue
        return PolicyClient(addr, timeout_s=5.0, cache_size=0)
    raise SystemExit(f"{what} not serving after {timeout_s}s")


def start_policy(state: Path, nats_url: str, name: str) -> tuple[Process, str]:
    port = embedded.free_port()
    env = {**os.environ, "SYMBI_NATS_URL": nats_url, "SYMBI_POLICY_PORT": str(port), "SYMBI_METRICS_PORT": "0",
           "SYMBI_STATE_DIR": str(state / name), "SYMBI_LOG_LEVEL": "WARNING"}  # fmt: skip
    return Process(
        [sys.executable, "-m", "symbi_cli", "serve", "policy"], env, state / f"{name}.log"
    ), f"127.0.0.1:{port}"


async def over_grpc(args: argparse.Namespace, state: Path) -> dict[str, float]:
    nats = embedded.start_nats(state / "nats")
    processes: list[Process] = []
    clients: list[PolicyClient] = []
    try:
        noop_port = embedded.free_port()
        noop = Process(
            [sys.executable, str(HERE / "_noop_policy_server.py"), str(noop_port)], dict(os.environ), state / "noop.log"
        )
        processes.append(noop)
        primary, primary_addr = start_policy(state, nats.url, "policy-a")
        replica, replica_addr = start_policy(state, nats.url, "policy-b")
        processes += [primary, replica]
        baseline = await wait_serving(f"127.0.0.1:{noop_port}", "no-op server", noop)
        a = await wait_serving(primary_addr, "policy replica a", primary)
        b = await wait_serving(replica_addr, "policy replica b", replica)
        clients += [baseline, a, b]
        text, _ = rule_set(10)
        await a.register(text, name="bench.yaml")
        requests, _, _ = workload(10, 1000)
        warmup = 200
        for client in (a, baseline):  # warm up connections and code paths
            await sequential(client, requests, warmup)
        out: dict[str, float] = {}
        for label, client in (("grpc", a), ("noop", baseline)):
            seq = await sequential(client, requests, args.requests)
            out[f"{label}_p50_ms"], out[f"{label}_p99_ms"] = seq["p50_ms"], seq["p99_ms"]
            out[f"{label}_concurrent_per_s"] = await concurrent(client, requests, args.requests, args.concurrency)
            out[f"{label}_batch_per_s"] = await batched(client, requests, args.batches, args.batch_size)
        out["propagation_p50_ms"], out["propagation_max_ms"], probes = await propagation(a, b, text, args.updates)
        decided = warmup + 2 * args.requests + args.batches * args.batch_size + probes
        out["audited"], out["decided"] = await audited(nats.url, decided), float(decided)
        return out
    finally:
        for client in clients:
            await client.close()
        for process in processes:
            process.stop()
        nats.stop(5)


async def propagation(a: PolicyClient, b: PolicyClient, text: str, updates: int) -> tuple[float, float, int]:
    """Register on replica a; time until replica b decides with the new policy-set version."""
    probe = request("tool_invoke", Principal("agent", "x"), Target("tool", "server1/read"), operation="call")
    delays, probes = [], 0
    for i in range(updates):
        reply = await a.register(text.replace("id: bench", f"id: bench\ndescription: update {i}"))
        started = time.perf_counter()
        while True:
            probes += 1
            if (await b.evaluate(probe)).policy_set_version >= reply.policy_set_version:
                break
            if time.perf_counter() - started > 10:
                raise SystemExit("replica b never applied the update")
        delays.append((time.perf_counter() - started) * 1e3)
    return statistics.median(delays), max(delays), probes


async def audited(nats_url: str, decided: int) -> float:
    """Decision events in the AUDIT stream (single and batched), once the buffers have drained."""
    nc = await natsio.connect(NatsSettings(url=nats_url), "bench")
    try:
        deadline = time.monotonic() + 30
        while True:
            events = await audit_events(nc, "policy.decision")
            count = len({event.details["decision_id"] for event in events})  # distinct decisions recorded
            if count >= decided or time.monotonic() > deadline:
                if count != len(events):
                    print(f"  warning: {len(events) - count} decisions were recorded more than once")
                return float(count)
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--requests", type=int, default=5000, help="gRPC decisions for latency and concurrency")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20, help="policy updates timed across two replicas")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per in-process measurement")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.batches, args.batch_size, args.updates, args.seconds = (
            50,
            4,
            2,
            100,
            2,
            0.05,
        )
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    local = [in_process(n, 500 if args.quick else 2000, args.seconds) for n in sizes]
    with tempfile.TemporaryDirectory(prefix="symbi-bench-policy-") as tmp:
        remote = asyncio.run(over_grpc(args, Path(tmp)))
    print("in-process decisions (one core):")
    columns = ("rules", 6), ("agree", 6), ("ours/s", 10), ("ours+stamp/s", 13), ("cedar/s", 10), ("cedar batch/s", 14)
    print("  " + " ".join(f"{name:>{width}}" for name, width in columns) + "  ratio")
    for row in local:
        ratio = row["ours_decide_per_s"] / row["cedar_per_s"]
        print(
            f"  {row['rules']:>6.0f} {row['agreement']:>6.0%} {row['ours_decide_per_s']:>10,.0f} "
            f"{row['ours_evaluate_per_s']:>13,.0f} {row['cedar_per_s']:>10,.0f} {row['cedar_batch_per_s']:>14,.0f} "
            f"{ratio:>5.1f}x"
        )
    r = remote
    print("over gRPC (symbi serve policy, 10 rules, auditing on; baseline: no-op PolicyService):")
    print(
        f"  sequential p50 {r['grpc_p50_ms']:.3f} ms  p99 {r['grpc_p99_ms']:.3f} ms   "
        f"(no-op p50 {r['noop_p50_ms']:.3f} ms, ratio {r['grpc_p50_ms'] / r['noop_p50_ms']:.2f}x)"
    )
    print(f"  concurrent ({args.concurrency}) {r['grpc_concurrent_per_s']:,.0f}/s", end="")
    print(f"   (no-op {r['noop_concurrent_per_s']:,.0f}/s)")
    print(f"  batch of {args.batch_size}: {r['grpc_batch_per_s']:,.0f} decisions/s", end="")
    print(f"   (no-op {r['noop_batch_per_s']:,.0f}/s)")
    print(
        f"  update propagation to a second replica: p50 {r['propagation_p50_ms']:.2f} ms, "
        f"max {r['propagation_max_ms']:.2f} ms"
    )
    print(f"  decision audit events in the AUDIT stream: {r['audited']:,.0f} of {r['decided']:,.0f} decisions")
    doc = {
        "benchmark": "policy",
        "in_process": local,
        "grpc": remote,
        "p50_ratio": r["grpc_p50_ms"] / r["noop_p50_ms"],
        "throughput_ratio": local[0]["ours_decide_per_s"] / local[0]["cedar_per_s"],
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
