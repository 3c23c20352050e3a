"""The message bus: direct, pub-sub and request-reply, plain NATS against Symbi's secured bus, in one run.

Everything is real and local: ``nats-server`` in operator mode (every connection a JWT
user), Redis, ``symbi serve policy`` and ``symbi serve lifecycle`` (which runs the
router) as their own processes; the agents live in this process, each on its own
broker connection.

Secured (Symbi): each message is sealed (AES-256-GCM + Ed25519), sent to the router,
checked, decided by the policy service over gRPC, rate limited in Redis, delivered
(DIRECT into JetStream, the rest on core NATS), audited, then opened by the receiver
(signature, replay, decryption). Plain (baseline): the same payload over raw nats-py
with the same delivery (JetStream publish + pull for direct, core pub-sub, core
request-reply), no router, no policy, no crypto.

Reported per pattern: p50/p99 latency (send -> handler for direct and pub-sub, the
round trip for request-reply) and messages/s with several senders; the routing step
alone (send -> SendResult); and the envelope crypto per message (seal + open), the
seed's "< 1 ms crypto overhead"; the router's p99 against the seed's "< 10 ms".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client, RawCredentials
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from symbi_common import embedded, envelope, natsauth, natsio, subjects
from symbi_common.bus.client import AgentBus, raise_for_status
from symbi_common.envelope import EnvelopeOpener, Opened
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.replay import MemoryReplayCache
from symbi_common.settings import MessagingSettings, NatsSettings
from symbi_proto.v1 import agent_pb2, message_pb2

POLICY = """
id: bench-messaging
cache_ttl: 30s
rules:
  - name: create
    effect: allow
    actions: [agent_create]
    when: subject.id == "bench"
  - name: same-tenant
    effect: allow
    actions: [message_send]
    when: subject.tenant == resource.tenant
"""


def stats_of(latencies: list[float], elapsed: float) -> dict[str, float]:
    values = sorted(latencies)
    return {
        "p50_ms": statistics.median(values) * 1e3,
        "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))] * 1e3,
        "msgs_per_s": len(values) / elapsed,
        "count": len(values),
    }


class Stack:
    """nats-server (operator mode), Redis, and the policy and lifecycle services as processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.authority = natsauth.BrokerAuthority.load_or_create(root / "auth")
        self.nats = embedded.start_nats(root / "nats", config=self.authority.server_config())
        self.redis = embedded.start_redis(root / "redis")
        self.creds = natsauth.write_creds(root / "auth" / "service.creds", self.authority.service_creds("bench"))
        self.issuer = self.authority.issuer.to_file(root / "auth" / "issuer.json")
        self.policy_port = embedded.free_port()
        self.processes: list[embedded.ManagedProcess] = []

    def env(self, metrics_port: int) -> dict[str, str]:
        return {
            **os.environ,
            "SYMBI_NATS_URL": self.nats.url,
            "SYMBI_NATS_CREDENTIALS": str(self.creds),
            "SYMBI_MESSAGING_ISSUER_FILE": str(self.issuer),
            "SYMBI_REDIS_URL": self.redis.url,
            "SYMBI_STATE_DIR": str(self.root / "state"),
            "SYMBI_POLICY_PORT": str(self.policy_port),
            "SYMBI_POLICY_ADDR": f"127.0.0.1:{self.policy_port}",
            "SYMBI_METRICS_PORT": str(metrics_port),
            "SYMBI_LOG_LEVEL": "WARNING",
            # The seed's default is a per-agent bucket; the benchmark measures the path, not the limit.
            "SYMBI_MESSAGING_RATE_LIMIT_PER_S": "100000",
            "SYMBI_MESSAGING_RATE_LIMIT_BURST": "100000",
        }

    def start(self, service: str) -> None:
        argv = [sys.executable, "-m", "symbi_cli", "serve", service]
        proc = embedded.ManagedProcess(service, argv, self.root / f"{service}.log", env=self.env(embedded.free_port()))
        proc.start()
        self.processes.append(proc)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(10)
        self.redis.stop(5)
        self.nats.stop(5)

    @property
    def nats_settings(self) -> NatsSettings:
        return NatsSettings(url=self.nats.url, credentials=self.creds, connect_timeout_s=20)


async def wait_ready(nc: Client, service: str, timeout_s: float = 60) -> None:
    from symbi_proto.v1 import health_pb2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = await natsio.request(
                nc, subjects.health(service), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=1
            )
            if status.status == health_pb2.SERVING_STATUS_SERVING:
                return
        except Exception:
            await asyncio.sleep(0.2)
    raise SystemExit(f"{service} not ready after {timeout_s}s")


async def make_agents(nc: Client, stack: Stack, count: int) -> list[AgentBus]:
    lifecycle = LifecycleClient(nc, actor="bench", timeout_s=20)
    buses = []
    for i in range(count):
        doc = {
            "metadata": {"name": f"bench_{i}", "version": "1.0.0"},
            "capabilities": ["send_messages"],
            "tenant": "bench",
            "with": {"sandbox": "Tier1", "timeout": "10s", "memory": "64MB", "cpu": 0.1},
            "task": {"image": "symbi/base:bookworm", "command": ["true"]},
        }
        source = agent_pb2.DefinitionSource(
            format=agent_pb2.DEFINITION_FORMAT_JSON, text=json.dumps(doc), name="b.json"
        )
        reply = await lifecycle.create_from(source)
        if reply.issues:
            raise SystemExit(f"cannot create agents: {reply.issues}")
        agent_id = reply.agent.agent_id
        while (await lifecycle.get(agent_id)).state != agent_pb2.AGENT_STATE_READY:  # noqa: ASYNC110 - polls a service
            await asyncio.sleep(0.05)
        creds = await natsio.request(
            nc,
            subjects.BUS_CREDENTIALS,
            message_pb2.BusCredentialsRequest(agent_id=agent_id, topics=["bench.ticks"]),
            message_pb2.BusCredentials,
            timeout=10,
        )
        buses.append(await AgentBus.connect(stack.nats_settings, creds, MessagingSettings()))
    return buses


# -- secured -----------------------------------------------------------------------------


async def secured_direct(senders: list[AgentBus], receiver: AgentBus, n: int, payload: bytes) -> dict[str, Any]:
    arrived: dict[str, float] = {}
    done = asyncio.Event()

    async def handler(opened: Opened) -> None:
        arrived[opened.header.message_id] = time.perf_counter()
        if len(arrived) >= n:
            done.set()

    consumer = await receiver.consume(handler, batch=64)
    sent_at: dict[str, float] = {}
    route: list[float] = []

    async def sender(bus: AgentBus, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            result = raise_for_status(await bus.send(receiver.agent_id, payload))
            route.append(time.perf_counter() - started)
            sent_at[result.message_id] = started

    started = time.perf_counter()
    await asyncio.gather(*(sender(bus, n // len(senders)) for bus in senders))
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    end_to_end = [arrived[mid] - t for mid, t in sent_at.items() if mid in arrived]
    return {"end_to_end": stats_of(end_to_end, elapsed), "send_to_result": stats_of(route, elapsed)}


async def secured_pubsub(senders: list[AgentBus], receiver: AgentBus, n: int, payload: bytes) -> dict[str, Any]:
    arrived: list[float] = []
    done = asyncio.Event()

    async def handler(opened: Opened) -> None:
        arrived.append(time.perf_counter() - float(opened.plaintext[:20]))
        if len(arrived) >= n:
            done.set()

    await receiver.subscribe("bench.ticks", handler)
    route: list[float] = []

    async def sender(bus: AgentBus, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            raise_for_status(await bus.publish("bench.ticks", f"{started:20.6f}".encode() + payload))
            route.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(sender(bus, n // len(senders)) for bus in senders))
    await asyncio.wait_for(done.wait(), 120)
    return {
        "end_to_end": stats_of(arrived, time.perf_counter() - started),
        "send_to_result": stats_of(route, time.perf_counter() - started),
    }


async def secured_request(senders: list[AgentBus], responder: AgentBus, n: int, payload: bytes) -> dict[str, Any]:
    async def echo(opened: Opened) -> bytes:
        return opened.plaintext

    await responder.serve_requests(echo)
    latencies: list[float] = []

    async def asker(bus: AgentBus, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await bus.request(responder.agent_id, payload, timeout=10)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(asker(bus, n // len(senders)) for bus in senders))
    return {"round_trip": stats_of(latencies, time.perf_counter() - started)}


# -- plain -------------------------------------------------------------------------------


async def plain(stack: Stack, n: int, concurrency: int, payload: bytes) -> dict[str, Any]:
    creds = RawCredentials(stack.authority.service_creds("plain"))
    pubs = [await nats.connect(stack.nats.url, user_credentials=creds) for _ in range(concurrency)]
    sub = await nats.connect(stack.nats.url, user_credentials=creds)
    js = sub.jetstream()
    await js.add_stream(StreamConfig(name="PLAIN", subjects=["plain.inbox"], retention=RetentionPolicy.WORK_QUEUE))
    await js.add_consumer("PLAIN", ConsumerConfig(durable_name="r", ack_policy=AckPolicy.EXPLICIT))
    out: dict[str, Any] = {}

    # direct: JetStream publish (acked) -> pull consumer -> ack
    arrived: list[float] = []
    route: list[float] = []

    async def pull() -> None:
        psub = await js.pull_subscribe_bind(durable="r", stream="PLAIN")
        while len(arrived) < n:
            try:
                msgs = await psub.fetch(64, timeout=1)
            except Exception:
                continue
            for msg in msgs:
                arrived.append(time.perf_counter() - float(msg.data[:20]))
                await msg.ack()

    async def js_sender(nc: Client, count: int) -> None:
        pjs = nc.jetstream()
        for _ in range(count):
            started = time.perf_counter()
            await pjs.publish("plain.inbox", f"{started:20.6f}".encode() + payload)
            route.append(time.perf_counter() - started)

    started = time.perf_counter()
    puller = asyncio.create_task(pull())
    await asyncio.gather(*(js_sender(nc, n // concurrency) for nc in pubs))
    await asyncio.wait_for(puller, 120)
    elapsed = time.perf_counter() - started
    out["direct"] = {"end_to_end": stats_of(arrived, elapsed), "send_to_result": stats_of(route, elapsed)}

    # pub-sub: core publish -> subscriber
    heard: list[float] = []
    done = asyncio.Event()

    async def on_tick(msg: Any) -> None:
        heard.append(time.perf_counter() - float(msg.data[:20]))
        if len(heard) >= n:
            done.set()

    await sub.subscribe("plain.ticks", cb=on_tick)
    await sub.flush()

    async def core_sender(nc: Client, count: int) -> None:
        for i in range(count):
            await nc.publish("plain.ticks", f"{time.perf_counter():20.6f}".encode() + payload)
            if i % 50 == 0:
                await nc.flush()
        await nc.flush()

    started = time.perf_counter()
    await asyncio.gather(*(core_sender(nc, n // concurrency) for nc in pubs))
    await asyncio.wait_for(done.wait(), 60)
    out["pubsub"] = {"end_to_end": stats_of(heard, time.perf_counter() - started)}

    # request-reply: core request -> echo
    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await sub.subscribe("plain.echo", cb=echo)
    await sub.flush()
    rtt: list[float] = []

    async def asker(nc: Client, count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await nc.request("plain.echo", payload, timeout=5)
            rtt.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(asker(nc, n // concurrency) for nc in pubs))
    out["request"] = {"round_trip": stats_of(rtt, time.perf_counter() - started)}
    for nc in [*pubs, sub]:
        await nc.close()
    return out


async def crypto_overhead(bus_a: AgentBus, bus_b: AgentBus, n: int, payload: bytes) -> dict[str, float]:
    """Seal + open of one envelope, in-process, keys derived and cached as on the bus."""
    key = envelope.pair_key(bus_a.keys, bus_b.agent_id, bus_b.keys.identity())
    directory = {bus_a.agent_id: bus_a.keys.identity()}

    class Known:
        def identity(self, agent_id: str) -> agent_pb2.AgentIdentity | None:
            return directory.get(agent_id)

    opener = EnvelopeOpener(Known(), MemoryReplayCache(), lambda _: key, recipient=bus_b.agent_id)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        sealed = envelope.seal(bus_a.keys, key, payload, kind=message_pb2.MESSAGE_KIND_DIRECT, recipient=bus_b.agent_id)
        await opener.open_bytes(envelope.wire(sealed))
        times.append(time.perf_counter() - started)
    return stats_of(times, sum(times))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = os.urandom(args.payload_bytes)
    with tempfile.TemporaryDirectory(prefix="symbi-bench-msg-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start("policy")
            stack.start("lifecycle")
            nc = await natsio.connect(stack.nats_settings, "bench")
            await wait_ready(nc, "policy")
            await wait_ready(nc, "lifecycle")
            policy = PolicyClient(f"127.0.0.1:{stack.policy_port}")
            await policy.register(POLICY, name="bench.yaml")
            await policy.close()
            print(f"plain baseline: {args.messages} messages per pattern, {args.concurrency} senders ...", flush=True)
            baseline = await plain(stack, args.messages, args.concurrency, payload)
            agents = await make_agents(nc, stack, args.concurrency + 1)
            senders, receiver = agents[:-1], agents[-1]
            for bus in senders:  # warm caches (identities, keys, policy decisions)
                await bus.send(receiver.agent_id, b"warm-up")
            drain = await receiver.consume(lambda _: asyncio.sleep(0))
            await asyncio.sleep(1.0)
            await drain.stop()
            results: dict[str, Any] = {}
            print("secured: direct ...", flush=True)
            results["direct"] = await secured_direct(senders, receiver, args.messages, payload)
            print("secured: pub-sub ...", flush=True)
            results["pubsub"] = await secured_pubsub(senders, receiver, args.messages, payload)
            print("secured: request-reply ...", flush=True)
            results["request"] = await secured_request(senders, receiver, args.messages // 2, payload)
            print("sequential routing latency (one sender) ...", flush=True)
            single = await secured_direct(senders[:1], receiver, max(50, args.messages // 4), payload)
            crypto = await crypto_overhead(senders[0], receiver, min(args.messages, 2000), payload)
            for bus in agents:
                await bus.close()
            await nc.close()
        finally:
            stack.stop()
    return {"plain": baseline, "secured": results, "single_sender": single, "crypto": crypto}


def report(doc: dict[str, Any], args: argparse.Namespace) -> None:
    plain, secured = doc["plain"], doc["secured"]
    print(f"\npayload {args.payload_bytes} bytes, {args.concurrency} concurrent senders")
    print(f"{'pattern':<34}{'p50 ms':>9}{'p99 ms':>9}{'msg/s':>10}   {'plain p50':>9}{'p99':>8}{'msg/s':>10}")
    rows = [
        ("direct, send -> handler", secured["direct"]["end_to_end"], plain["direct"]["end_to_end"]),
        ("direct, send -> SendResult", secured["direct"]["send_to_result"], plain["direct"]["send_to_result"]),
        ("pub-sub, publish -> handler", secured["pubsub"]["end_to_end"], plain["pubsub"]["end_to_end"]),
        ("request-reply, round trip", secured["request"]["round_trip"], plain["request"]["round_trip"]),
    ]
    for name, ours, base in rows:
        print(
            f"{name:<34}{ours['p50_ms']:>9.2f}{ours['p99_ms']:>9.2f}{ours['msgs_per_s']:>10.0f}   "
            f"{base['p50_ms']:>9.2f}{base['p99_ms']:>8.2f}{base['msgs_per_s']:>10.0f}"
        )
    single = doc["single_sender"]["send_to_result"]
    crypto = doc["crypto"]
    print(
        f"routing (one sender, send -> SendResult): p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms "
        f"(target p99 < 10 ms)"
    )
    print(
        f"crypto per message (seal + open): p50 {crypto['p50_ms']:.3f} ms, p99 {crypto['p99_ms']:.3f} ms "
        "(target < 1 ms)"
    )
    direct = secured["direct"]["end_to_end"]
    base = plain["direct"]["end_to_end"]
    ratios = {
        "p50_ratio": direct["p50_ms"] / base["p50_ms"],
        "throughput_ratio": direct["msgs_per_s"] / base["msgs_per_s"],
    }
    print(f"secured/plain, direct: p50 x{ratios['p50_ratio']:.1f}, throughput x{ratios['throughput_ratio']:.2f}")
    print("BENCH " + json.dumps({"benchmark": "messaging", "payload_bytes": args.payload_bytes, **doc, **ratios,
                                  "routing_p99_ms": single["p99_ms"], "crypto_p99_ms": crypto["p99_ms"]}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages per pattern (default 2000)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent senders (default 4)")
    parser.add_argument("--payload-bytes", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 messages, 2 senders")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.concurrency = 40, 2
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
