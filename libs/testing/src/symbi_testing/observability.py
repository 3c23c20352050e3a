"""What each service must export to Prometheus, and checks that dashboards only ask for that.

``KEY_SERIES`` is the contract: the metric names (as PromQL queries them: counters with
``_total``, histograms by their base name) that each service exports. The integration test
scrapes every running service's ``/metrics`` and checks its entries; the dashboard test
checks that every metric ``deploy/grafana/symbi-overview.json`` queries is listed here, so
neither the services nor the dashboard can drift without a test failing.
``docs/observability.md`` lists the same names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

COMMON = (
    "symbi_service_ready",
    "symbi_build_info",
    "symbi_nats_requests_total",
    "symbi_nats_request_seconds",
)

KEY_SERIES: dict[str, tuple[str, ...]] = {
    "policy": (
        "symbi_policy_decisions_total",
        "symbi_policy_decision_seconds",
        "symbi_policy_set_version",
        "symbi_policy_policies",
    ),
    "audit": (
        "symbi_audit_events_appended_total",
        "symbi_audit_chain_verified",
        "symbi_audit_verifications_total",
        "symbi_audit_last_verification_timestamp_seconds",
        "symbi_audit_log_size",
        "symbi_audit_writer",
        "symbi_audit_dead_letters_total",
    ),
    "lifecycle": (
        "symbi_agents",
        "symbi_agents_created_total",
        "symbi_agent_transitions_total",
        "symbi_messages_routed_total",
        "symbi_messages_rejected_total",
        "symbi_message_route_seconds",
        "symbi_message_dead_letters_total",
    ),
    "scheduler": (
        "symbi_scheduler_queued",
        "symbi_scheduler_decision_seconds",
        "symbi_scheduler_queue_wait_seconds",
        "symbi_scheduler_placements_total",
        "symbi_scheduler_preemptions_total",
        "symbi_scheduler_tasks_finished_total",
    ),
    "sandbox-orchestrator": (
        "symbi_sandbox_starts_total",
        "symbi_sandbox_start_seconds",
        "symbi_sandbox_exits_total",
        "symbi_worker_tasks_running",
        "symbi_worker_free_memory_mb",
        "symbi_worker_free_cpu_cores",
    ),
    "context": (
        "symbi_context_items_stored_total",
        "symbi_context_items_returned",
        "symbi_context_items_withheld_total",
        "symbi_context_embedding_seconds",
    ),
    "mcp-gateway": (
        "symbi_mcp_tool_calls_total",
        "symbi_mcp_tool_call_seconds",
        "symbi_mcp_servers_connected",
        "symbi_mcp_tools_offered",
        "symbi_mcp_tools_refused",
    ),
    "api": ("symbi_api_requests_total", "symbi_api_request_seconds", "symbi_api_requests_in_flight"),
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("", "_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}
_HISTOGRAM_PARTS = re.compile(r"_(bucket|count|sum)$")
METRIC_NAME = re.compile(r"\bsymbi_[a-z0-9_]+\b")


def all_key_series() -> set[str]:
    return set(COMMON).union(*KEY_SERIES.values())


@dataclass
class Exposition:
    """One scrape: which names PromQL can query, and the label names seen on each."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)
    sampled: set[str] = field(default_factory=set)
    """Names with at least one sample (a labelled metric nobody used yet has none)."""

    def merge(self, other: Exposition) -> None:
        self.names |= other.names
        self.sampled |= other.sampled
        for name, labels in other.labels.items():
            self.labels.setdefault(name, set()).update(labels)


def parse_exposition(text: str) -> Exposition:
    """Every queryable name of a Prometheus text exposition, with or without samples."""
    out = Exposition()
    for family in text_string_to_metric_families(text):
        out.names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            out.sampled.add(sample.name)
            out.labels.setdefault(sample.name, set()).update(sample.labels)
            if family.type == "histogram":
                out.sampled.add(family.name)
                out.labels.setdefault(family.name, set()).update(k for k in sample.labels if k != "le")
    return out


def base_name(name: str) -> str:
    """``symbi_x_seconds_bucket`` -> ``symbi_x_seconds``: the name a catalogue lists a histogram by."""
    return _HISTOGRAM_PARTS.sub("", name)


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every panel, rows included."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(panel.get("title", "")), str(target["expr"])


def metrics_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


_MATCHERS = re.compile(r"(symbi_[a-z0-9_]+)\s*\{([^}]*)\}")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def labels_in(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """Label names in matchers, per metric, and label names in grouping clauses of ``expr``."""
    matched: dict[str, set[str]] = {}
    for metric, body in _MATCHERS.findall(expr):
        matched.setdefault(metric, set()).update(_LABEL.findall(body))
    grouped = {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",") if label.strip()}
    return matched, grouped


def load_dashboard(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict)
    return doc
