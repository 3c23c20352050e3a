"""The orchestrator's Prometheus metrics: sandbox starts by tier and outcome, exits, this node's load.

- ``symbi_sandbox_starts_total{kind,tier,outcome}``: every start asked of this node, ``kind``
  ``task`` (a scheduled task) or ``session`` (a long-lived sandboxed process such as an MCP
  server), ``tier`` ``Tier1``/``Tier2``, ``outcome`` ``started`` (running), ``refused`` (not
  admitted: tier unavailable, too little capacity, bad request) or ``failed`` (admitted, but the
  sandbox could not be created);
- ``symbi_sandbox_start_seconds{kind,tier}``: time from the request to a running sandbox;
- ``symbi_sandbox_exits_total{tier,reason}``: how tasks ended (``exited``, ``oom_killed``,
  ``timed_out``, ``stopped``, ``start_failed``, ``output_limit``, ``lost``);
- ``symbi_worker_tasks_running``, ``symbi_worker_free_memory_mb``, ``symbi_worker_free_cpu_cores``:
  read from the worker at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from symbi_proto.v1 import sandbox_pb2, task_pb2

TIERS: dict[int, str] = {sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER: "Tier1", sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR: "Tier2"}
OUTCOMES = ("started", "refused", "failed")


def tier_label(tier: int) -> str:
    return TIERS.get(tier, "unspecified")


def exit_label(reason: int) -> str:
    return task_pb2.TaskExitReason.Name(reason).removeprefix("TASK_EXIT_REASON_").lower()  # type: ignore[arg-type]


class SandboxMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.starts = Counter(
            "symbi_sandbox_starts",
            "Sandbox starts asked of this node, by kind, tier and outcome",
            ["kind", "tier", "outcome"],
            registry=registry,
        )
        self.start_seconds = Histogram(
            "symbi_sandbox_start_seconds",
            "Time from a start request to a running sandbox",
            ["kind", "tier"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.exits = Counter(
            "symbi_sandbox_exits",
            "Tasks ended on this node, by tier and exit reason",
            ["tier", "reason"],
            registry=registry,
        )
        for kind in ("task", "session"):  # every series exists from the start, so rates and alerts see zeros
            for tier in TIERS.values():
                for outcome in OUTCOMES:
                    self.starts.labels(kind, tier, outcome)

    def started(self, kind: str, tier: int, seconds: float) -> None:
        self.starts.labels(kind, tier_label(tier), "started").inc()
        self.start_seconds.labels(kind, tier_label(tier)).observe(seconds)

    def refused(self, kind: str, tier: int) -> None:
        self.starts.labels(kind, tier_label(tier), "refused").inc()

    def failed(self, kind: str, tier: int) -> None:
        self.starts.labels(kind, tier_label(tier), "failed").inc()

    def exited(self, tier: int, reason: int) -> None:
        self.exits.labels(tier_label(tier), exit_label(reason)).inc()

    @staticmethod
    def node_gauges(
        registry: CollectorRegistry, running: Callable[[], float], free_memory: Callable[[], float],
        free_cpu: Callable[[], float],
    ) -> None:  # fmt: skip
        """The node's load, computed when scraped (never stale between health checks)."""
        Gauge("symbi_worker_tasks_running", "Tasks running on this worker", registry=registry).set_function(running)
        Gauge("symbi_worker_free_memory_mb", "Memory not reserved by tasks", registry=registry).set_function(
            free_memory
        )
        Gauge("symbi_worker_free_cpu_cores", "CPU not reserved by tasks", registry=registry).set_function(free_cpu)
