"""Compliance reports over a real log: sections, groups, formats, custom definitions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from symbi_audit.log import AuditLog
from symbi_audit.reports import BUILTIN, build_report
from symbi_common.audit_events import build_event
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import audit_pb2

INTACT = audit_pb2.VerifyResponse(ok=True, events_checked=9, checkpoints_checked=1)


def fill(log: AuditLog) -> None:
    def ev(
        kind: str,
        agent: str,
        labels: list[str],
        outcome: audit_pb2.AuditOutcome.ValueType = audit_pb2.AUDIT_OUTCOME_SUCCESS,
        **details: object,
    ) -> audit_pb2.AuditEvent:
        return build_event(kind, source="t", agent_id=agent, data_labels=labels, outcome=outcome, details=details)

    log.append([
        ev("tool.call", "alice", ["phi"], resource_id="ehr/read"),
        ev("tool.call", "alice", ["phi"], resource_id="ehr/read"),
        ev("tool.call", "bob", ["phi"], resource_id="ehr/search"),
        ev("policy.decision", "bob", ["phi"], outcome=audit_pb2.AUDIT_OUTCOME_DENIED, reason="PHI may not leave"),
        ev("context.deleted", "carol", ["pii"]),
        ev("policy.registered", "", [], policy_id="tools-default"),
        ev("tool.call", "carol", ["financial"]),
    ])  # fmt: skip


def report(log: AuditLog, framework: str, fmt: int = audit_pb2.REPORT_FORMAT_JSON, definition: str = "") -> Any:
    request = audit_pb2.ComplianceReportRequest(framework=framework, format=fmt, definition=definition)  # type: ignore[arg-type]
    response = build_report(log, request, INTACT)
    if fmt == audit_pb2.REPORT_FORMAT_JSON:
        assert response.media_type == "application/json"
        return json.loads(response.document)
    return {"document": response.document.decode(), "media_type": response.media_type}


def test_hipaa_counts_phi_access_and_denials_by_agent(audit_log: AuditLog) -> None:
    fill(audit_log)
    summary = report(audit_log, "hipaa")
    sections = {s["id"]: s for s in summary["sections"]}
    assert sections["phi-access"]["groups"] == {"alice": 2, "bob": 2}
    assert sections["phi-denials"]["count"] == 1
    assert sections["phi-denials"]["rows"][0]["summary"] == "PHI may not leave"
    assert sections["phi-tools"]["count"] == 3
    assert sections["key-events"]["groups"] == {"audit.log_created": 1}
    assert summary["integrity"]["ok"] is True


def test_gdpr_and_sox_sections(audit_log: AuditLog) -> None:
    fill(audit_log)
    gdpr = {s["id"]: s for s in report(audit_log, "gdpr")["sections"]}
    assert gdpr["erasures"]["count"] == 1
    assert gdpr["personal-data-kinds"]["groups"] == {"context.deleted": 1}
    sox = {s["id"]: s for s in report(audit_log, "sox")["sections"]}
    assert sox["policy-changes"]["groups"] == {"policy.registered": 1}
    assert sox["financial"]["groups"] == {"carol": 1}


def test_markdown_and_html(audit_log: AuditLog) -> None:
    fill(audit_log)
    md = report(audit_log, "hipaa", audit_pb2.REPORT_FORMAT_MARKDOWN)
    assert md["media_type"] == "text/markdown"
    assert "## Agents that touched PHI" in md["document"]
    assert "| alice | 2 |" in md["document"]
    page = report(audit_log, "hipaa", audit_pb2.REPORT_FORMAT_HTML)
    assert page["media_type"] == "text/html"
    assert "<h2>Agents that touched PHI</h2>" in page["document"]


def test_a_custom_definition(audit_log: AuditLog) -> None:
    fill(audit_log)
    definition = """
name: tools
title: Tool use
sections:
  - {id: by-outcome, title: Tool calls by outcome, event_types: ["tool.*"], group_by: outcome}
  - {id: labels, title: Labels touched, group_by: label, rows: 0}
"""
    sections = {s["id"]: s for s in report(audit_log, "tools", definition=definition)["sections"]}
    assert sections["by-outcome"]["groups"] == {"success": 4}
    assert sections["labels"]["groups"] == {"phi": 4, "financial": 1, "pii": 1}
    assert sections["labels"]["rows"] == []


@pytest.mark.parametrize(
    ("framework", "definition", "message"),
    [("pci", "", "unknown framework 'pci'"), ("x", "name: x\n", "bad report definition"), ("x", "[", "bad report")],
)
def test_bad_definitions_are_explained(audit_log: AuditLog, framework: str, definition: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        report(audit_log, framework, definition=definition)


def test_every_builtin_renders(audit_log: AuditLog) -> None:
    for name in BUILTIN:
        assert report(audit_log, name)["framework"] == name


def test_the_documented_definition_runs(audit_log: AuditLog) -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "audit.md").read_text()
    (definition,) = re.findall(r"^```yaml\n(.*?)^```$", doc, re.S | re.M)
    fill(audit_log)
    sections = {s["id"]: s for s in report(audit_log, "tools", definition=definition)["sections"]}
    assert sections["calls"]["groups"] == {"alice": 2, "bob": 1, "carol": 1}
