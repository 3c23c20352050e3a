"""Audit log: appends/s with signed checkpoints, end-to-end ingestion, verification of a large log, proofs.

Measured:

- **append**: ``AuditLog.append`` in batches, fsync per batch, a signed checkpoint
  every 1,000 events (the service defaults), events of a realistic size;
- **ingest**: the whole pipeline: producers' ``AuditBuffer`` -> JetStream -> the
  audit service (``symbi serve audit``, its own process) -> durable, acknowledged;
- **verify**: the offline verifier over the whole log (``--verify-events``,
  one million by default), hashes and checkpoints, then with every signature;
- **proofs**: inclusion and consistency proof sizes and verification time at that size.

Baseline in the same run: Ed25519 signing alone (the same number of events, the
same threads), the floor of any log that signs every event; append throughput is
reported as a ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from symbi_audit import canonical
from symbi_audit.log import AuditLog, LogOptions
from symbi_audit.merkle import verify_consistency, verify_inclusion
from symbi_audit.verify import verify_directory
from symbi_common import audit_events, embedded, natsio, subjects
from symbi_common.settings import NatsSettings
from symbi_proto.v1 import audit_pb2, common_pb2


def events(n: int, start: int = 0) -> list[audit_pb2.AuditEvent]:
    return [
        audit_events.build_event(
            "policy.decision",
            source="bench",
            agent_id=f"agent-{i % 50}",
            details={
                "decision_id": f"d-{i}",
                "outcome": "allow",
                "enforcement_point": "tool_invoke",
                "resource_id": f"server{i % 10}/read",
                "policy_set_version": 3,
                "matched_rule": "r1",
            },
            data_labels=["pii"] if i % 10 == 0 else [],
        )
        for i in range(start, start + n)
    ]


def sign_floor(n: int, threads: int) -> float:
    """Signatures/s for n chain hashes on ``threads`` threads: what signing every event costs at least."""
    key = Ed25519PrivateKey.generate()
    inputs = [os.urandom(32) for _ in range(n)]
    chunks = [inputs[i : i + 256] for i in range(0, n, 256)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda chunk: [key.sign(canonical.event_signing_input(h)) for h in chunk], chunks))
    return n / (time.perf_counter() - started)


def append_rate(directory: Path, n: int, batch: int) -> dict[str, float]:
    log = AuditLog.open(directory, LogOptions(checkpoint_every=1000, checkpoint_interval_s=1.0))
    todo = events(n)
    latencies = []
    started = time.perf_counter()
    for i in range(0, n, batch):
        t = time.perf_counter()
        log.append(todo[i : i + batch])
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    checkpoints = len(log.checkpoints)
    log.close()
    return {
        "appends_per_s": n / elapsed,
        "batch_p50_ms": statistics.median(latencies) * 1e3,
        "checkpoints": checkpoints,
    }


def grow(directory: Path, total: int, progress: bool) -> AuditLog:
    """A log of ``total`` events, built fast (no fsync); returned open."""
    log = AuditLog.open(directory, LogOptions(durable=False, checkpoint_every=10_000, checkpoint_interval_s=3600))
    step = 10_000
    started = time.perf_counter()
    while log.size < total:
        log.append(events(min(step, total - log.size), start=log.size))
        if progress and log.size % 100_000 < step:
            rate = log.size / (time.perf_counter() - started)
            print(f"  building the log: {log.size:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    log.checkpoint()
    return log


def proofs(log: AuditLog, samples: int) -> dict[str, float]:
    size = log.size
    cp = log.checkpoints[-1]
    rng = random.Random(1)
    lengths, verify_us = [], []
    for index in rng.sample(range(size), samples):
        path = log.tree.inclusion_proof(index, size)
        leaf = log.tree.leaf(index)
        started = time.perf_counter()
        assert verify_inclusion(index, size, leaf, path, cp.root_hash)
        verify_us.append((time.perf_counter() - started) * 1e6)
        lengths.append(len(path))
    first = log.checkpoints[len(log.checkpoints) // 2]
    consistency = log.tree.consistency_proof(first.tree_size, size)
    started = time.perf_counter()
    assert verify_consistency(first.tree_size, size, first.root_hash, cp.root_hash, consistency)
    return {
        "inclusion_hashes": statistics.median(lengths),
        "inclusion_bytes": statistics.median(lengths) * 32,
        "inclusion_verify_us": statistics.median(verify_us),
        "consistency_hashes": len(consistency),
        "consistency_bytes": len(consistency) * 32,
        "consistency_verify_us": (time.perf_counter() - started) * 1e6,
    }


async def ingest(state: Path, n: int) -> dict[str, float]:
    """Producers -> JetStream -> ``symbi serve audit`` -> durable: events/s end to end."""
    nats = embedded.start_nats(state / "nats")
    env = {**os.environ, "SYMBI_NATS_URL": nats.url, "SYMBI_STATE_DIR": str(state / "svc"),
           "SYMBI_METRICS_PORT": "0", "SYMBI_LOG_LEVEL": "WARNING"}  # fmt: skip
    argv = [sys.executable, "-m", "symbi_cli", "serve", "audit"]
    proc = embedded.ManagedProcess("audit", argv, state / "audit.log", env=env)
    proc.start()
    nc = await natsio.connect(NatsSettings(url=nats.url), "bench")
    try:
        await size(nc, 1, 60)  # the writer is up: the genesis is there
        buffer = audit_events.AuditBuffer(nc.jetstream(), capacity=n + 1)
        task = asyncio.create_task(buffer.run())
        todo = events(n)
        started = time.perf_counter()
        for event in todo:
            buffer.offer(event)
        await buffer.flush(120)
        published = time.perf_counter() - started
        await size(nc, n + 1, 300)
        elapsed = time.perf_counter() - started
        task.cancel()
        return {"ingest_per_s": n / elapsed, "publish_per_s": n / published}
    finally:
        await nc.close()
        proc.stop(30)
        nats.stop(5)


async def size(nc: object, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    request = audit_pb2.AuditQueryRequest(page=common_pb2.PageRequest(page_size=1))
    while time.monotonic() < deadline:
        try:
            reply = await natsio.request(nc, subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse, timeout=5)  # type: ignore[arg-type]
            if reply.page.total_size >= at_least:
                return
        except Exception:  # not up yet
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"the audit service did not reach {at_least} events in {timeout_s}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run, figures meaningless)")
    parser.add_argument("--append-events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--ingest-events", type=int, default=50_000)
    parser.add_argument("--verify-events", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.quick:
        args.append_events, args.batch, args.ingest_events, args.verify_events = 2000, 200, 1000, 3000
    with tempfile.TemporaryDirectory(prefix="symbi-bench-audit-") as tmp:
        root = Path(tmp)
        floor = sign_floor(args.append_events, 2)
        appended = append_rate(root / "append", args.append_events, args.batch)
        ingested = asyncio.run(ingest(root / "ingest", args.ingest_events))
        log = grow(root / "big", args.verify_events, progress=not args.quick)
        proof = proofs(log, 200 if not args.quick else 20)
        first = log.keys.keys[0]
        log.close()
        trusted = {first.key_id: first.public}
        started = time.perf_counter()
        result = verify_directory(root / "big", trusted)
        verify_s = time.perf_counter() - started
        assert result.ok, result.failure
        started = time.perf_counter()
        signed = verify_directory(root / "big", trusted, check_event_signatures=True)
        verify_sig_s = time.perf_counter() - started
        assert signed.ok
    n = args.verify_events + 1
    print(f"append (batches of {args.batch}, fsync per batch, checkpoint every 1,000):")
    print(f"  {appended['appends_per_s']:,.0f} events/s; batch p50 {appended['batch_p50_ms']:.1f} ms; "
          f"{appended['checkpoints']:.0f} signed checkpoints")  # fmt: skip
    print(f"  baseline, Ed25519 signing alone on 2 threads: {floor:,.0f}/s "
          f"(ratio {appended['appends_per_s'] / floor:.2f}x)")  # fmt: skip
    print(
        f"ingest end to end (AuditBuffer -> JetStream -> symbi serve audit -> durable): "
        f"{ingested['ingest_per_s']:,.0f} events/s (producer published at {ingested['publish_per_s']:,.0f}/s)"
    )
    print(
        f"verify {n:,} events: {verify_s:.1f} s ({n / verify_s:,.0f} events/s) with hashes and "
        f"{result.checkpoints_checked} checkpoint signatures; {verify_sig_s:.1f} s with every signature"
    )
    inclusion = f"{proof['inclusion_hashes']:.0f} hashes ({proof['inclusion_bytes']:.0f} B)"
    consistency = f"{proof['consistency_hashes']:.0f} hashes ({proof['consistency_bytes']:.0f} B)"
    print(f"proofs at {n:,} events: inclusion {inclusion}, verified in {proof['inclusion_verify_us']:.1f} µs; "
          f"consistency {consistency}, {proof['consistency_verify_us']:.1f} µs")  # fmt: skip
    doc = {
        "benchmark": "audit",
        "append": appended,
        "sign_floor_per_s": floor,
        "ingest": ingested,
        "verify": {"events": n, "seconds": verify_s, "with_signatures_seconds": verify_sig_s},
        "proofs": proof,
        "p50_ratio": appended["batch_p50_ms"] / (args.batch / floor * 1e3),
        "throughput_ratio": appended["appends_per_s"] / floor,
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
