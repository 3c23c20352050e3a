"""The Grafana dashboard only asks for metrics the services export, and covers what operators watch.

``symbi_testing.observability.KEY_SERIES`` is the list of what each service exports (checked
against live ``/metrics`` by ``tests/integration/test_observability.py``); this file checks
the dashboard and the docs against that list, without starting anything.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from symbi_testing.observability import (
    KEY_SERIES,
    all_key_series,
    base_name,
    dashboard_queries,
    load_dashboard,
    metrics_in,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "symbi-overview.json"
# What issue 10 asks operators to see: agents by state, task queue depth, scheduling latency,
# messages and latency, policy decisions by result and latency, audit append rate and chain
# status, sandbox starts by tier and outcome, tool calls.
MUST_SHOW = {
    "symbi_agents",
    "symbi_scheduler_queued",
    "symbi_scheduler_decision_seconds",
    "symbi_messages_routed_total",
    "symbi_message_route_seconds",
    "symbi_policy_decisions_total",
    "symbi_policy_decision_seconds",
    "symbi_audit_events_appended_total",
    "symbi_audit_chain_verified",
    "symbi_sandbox_starts_total",
    "symbi_mcp_tool_calls_total",
}


@pytest.fixture(scope="module")
def queries() -> list[tuple[str, str]]:
    return list(dashboard_queries(load_dashboard(DASHBOARD)))


def test_every_queried_metric_is_one_a_service_exports(queries: list[tuple[str, str]]) -> None:
    known = all_key_series()
    assert queries
    for title, expr in queries:
        names = metrics_in(expr)
        assert names, f"{title}: {expr} queries no Symbi metric"
        unknown = {name for name in names if base_name(name) not in known and name not in known}
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which no service exports"


def test_the_dashboard_shows_what_operators_watch(queries: list[tuple[str, str]]) -> None:
    shown = {base_name(name) for _, expr in queries for name in metrics_in(expr)}
    assert sorted(MUST_SHOW - shown) == []


def test_expressions_are_well_formed(queries: list[tuple[str, str]]) -> None:
    for title, expr in queries:
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, f"{title}: unbalanced parentheses in {expr}"
        assert depth == 0, f"{title}: unbalanced parentheses in {expr}"
        assert expr.count("{") == expr.count("}"), f"{title}: unbalanced braces in {expr}"
        if "histogram_quantile" in expr:
            assert "_bucket[" in expr, f"{title}: a quantile needs buckets"
            assert "by (le" in expr, f"{title}: a quantile needs buckets summed by le"
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, f"{title}: rates use Grafana's $__rate_interval"


def test_panels_are_laid_out_and_use_the_datasource_variable() -> None:
    dashboard = load_dashboard(DASHBOARD)
    panels = dashboard["panels"]
    ids = Counter(panel["id"] for panel in panels)
    assert [pid for pid, n in ids.items() if n > 1] == []
    assert {var["name"] for var in dashboard["templating"]["list"]} == {"datasource"}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_docs_list_every_key_series() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    missing = sorted(name for name in all_key_series() if f"`{name}" not in text)
    assert missing == []
    for service in KEY_SERIES:
        assert f"| `{service}` |" in text, service
