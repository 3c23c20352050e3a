"""Prometheus metrics of the router, and the ``MessagingStats`` summary built from them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_proto.v1 import message_pb2


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.routed = Counter(
            "symbi_messages_routed", "Messages accepted by the router", ["kind", "status"], registry=registry
        )
        self.rejected = Counter(
            "symbi_messages_rejected", "Messages refused by the router, by reason", ["reason"], registry=registry
        )
        self.receiver_rejected = Counter(
            "symbi_messages_rejected_by_receivers",
            "Messages refused by their receiving agent, by reason",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "symbi_message_dead_letters", "Messages parked on the DEADLETTER stream", ["reason"], registry=registry
        )
        self.route_seconds = Histogram(
            "symbi_message_route_seconds",
            "Time from an envelope's arrival at the router to its SendResult",
            ["kind"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.credentials = Counter(
            "symbi_bus_credentials_issued", "Bus credentials issued to agents", registry=registry
        )

    def stats(self) -> message_pb2.MessagingStats:
        out = message_pb2.MessagingStats()
        for sample in _samples(self.routed):
            out.sent += int(sample[1])
        for labels, value in _samples(self.rejected):
            out.rejected += int(value)
            out.rejected_by_reason[labels["reason"]] = out.rejected_by_reason[labels["reason"]] + int(value)
        for labels, value in _samples(self.receiver_rejected):
            out.rejected += int(value)
            key = f"receiver_{labels['reason']}"
            out.rejected_by_reason[key] = out.rejected_by_reason[key] + int(value)
        out.dead_letters = sum(int(value) for _, value in _samples(self.dead_letters))
        return out


def _samples(counter: Counter) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]
