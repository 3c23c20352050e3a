"""Secure envelope cost per message: seal (encrypt + sign) and open (verify + replay check + decrypt).

Baseline in the same run: the raw primitives the envelope is built from (AES-256-GCM
encrypt + decrypt and Ed25519 sign + verify of the same bytes, with a precomputed key),
so the ratio shows what the envelope adds (protobuf header, framing, canonical-encoding
check, replay cache, key lookup). Also reports the pairwise key derivation (X25519 +
HKDF), which is cached per agent pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from symbi_common import envelope
from symbi_common.envelope import AgentKeys, EnvelopeOpener
from symbi_common.replay import MemoryReplayCache
from symbi_proto.v1 import agent_pb2, message_pb2


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def summarise(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
        "throughput_per_s": len(latencies) / sum(latencies),
    }


def raw_primitives(messages: int, payload: bytes) -> dict[str, float]:
    key, signer = os.urandom(32), Ed25519PrivateKey.generate()
    public = signer.public_key()
    aes = AESGCM(key)
    latencies = []
    for _ in range(messages):
        started = time.perf_counter()
        nonce = os.urandom(12)
        ciphertext = aes.encrypt(nonce, payload, b"header")
        signature = signer.sign(b"header" + ciphertext)
        public.verify(signature, b"header" + ciphertext)
        aes.decrypt(nonce, ciphertext, b"header")
        latencies.append(time.perf_counter() - started)
    return summarise(latencies)


class Directory:
    def __init__(self, *agents: AgentKeys) -> None:
        self.known = {agent.agent_id: agent.identity() for agent in agents}

    def identity(self, agent_id: str) -> agent_pb2.AgentIdentity | None:
        return self.known.get(agent_id)


async def secured(messages: int, payload: bytes) -> dict[str, dict[str, float]]:
    alice, bob = AgentKeys.generate("alice"), AgentKeys.generate("bob")
    directory = Directory(alice, bob)
    key = envelope.pair_key(alice, "bob", bob.identity())
    opener = EnvelopeOpener(
        directory,
        MemoryReplayCache(),
        lambda header: envelope.pair_key(bob, header.sender, directory.known[header.sender]),
        recipient="bob",
    )
    seal_times, open_times, total = [], [], []
    for _ in range(messages):
        started = time.perf_counter()
        wire = envelope.wire(envelope.seal(alice, key, payload, kind=message_pb2.MESSAGE_KIND_DIRECT, recipient="bob"))
        sealed = time.perf_counter()
        await opener.open_bytes(wire)
        done = time.perf_counter()
        seal_times.append(sealed - started)
        open_times.append(done - sealed)
        total.append(done - started)
    derive = []
    for _ in range(min(messages, 500)):
        peer = AgentKeys.generate("peer")
        started = time.perf_counter()
        envelope.pair_key(alice, "peer", peer.identity())
        derive.append(time.perf_counter() - started)
    return {
        "seal": summarise(seal_times),
        "open": summarise(open_times),
        "seal+open": summarise(total),
        "pair key derivation (uncached)": summarise(derive),
    }


def report(raw: dict[str, float], ours: dict[str, dict[str, float]], payload_bytes: int) -> dict[str, object]:
    rows = {"raw AES-GCM + Ed25519": raw, **ours}
    print(f"payload {payload_bytes} bytes")
    print(f"{'':<34}{'p50 µs':>10}{'p99 µs':>10}{'msg/s':>12}")
    for name, figures in rows.items():
        print(f"{name:<34}{figures['p50_us']:>10.1f}{figures['p99_us']:>10.1f}{figures['throughput_per_s']:>12.0f}")
    total = ours["seal+open"]
    ratios = {
        "p50_ratio": total["p50_us"] / raw["p50_us"],
        "throughput_ratio": total["throughput_per_s"] / raw["throughput_per_s"],
        "crypto_overhead_p50_ms": total["p50_us"] / 1000,
        "crypto_overhead_p99_ms": total["p99_us"] / 1000,
    }
    print(
        f"envelope/raw: p50 x{ratios['p50_ratio']:.2f}, throughput x{ratios['throughput_ratio']:.2f}; "
        f"crypto overhead per message p50 {ratios['crypto_overhead_p50_ms']:.3f} ms, "
        f"p99 {ratios['crypto_overhead_p99_ms']:.3f} ms (target < 1 ms)"
    )
    doc = {"benchmark": "envelope", "payload_bytes": payload_bytes, "results": rows, **ratios}
    print("BENCH " + json.dumps(doc))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    payload = os.urandom(args.payload_bytes)
    raw_primitives(min(200, args.messages), payload)  # warm-up
    raw = raw_primitives(args.messages, payload)
    ours = asyncio.run(secured(args.messages, payload))
    report(raw, ours, args.payload_bytes)


if __name__ == "__main__":
    main()
