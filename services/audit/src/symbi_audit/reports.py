"""Compliance reports: which agents touched which data, what was denied, what changed.

A report definition is a title and sections; each section selects events by type
(exact or ``prefix.*``), data label, outcome and the report's time range, counts
them grouped by agent, event type, label or outcome, and shows the first rows.
Built in: ``hipaa``, ``gdpr`` and ``sox`` (below); any other definition is YAML::

    name: tools
    title: Tool use
    sections:
      - {id: calls, title: Tool calls by agent, event_types: ["tool.*"], group_by: agent}
      - {id: refused, title: Refused calls, event_types: ["tool.*"], outcome: denied}

Every report carries the integrity of the log at the time it was built (a full
verification), and renders as JSON, Markdown or HTML.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any, Literal

import yaml
from google.protobuf.json_format import ParseDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symbi_audit import canonical
from symbi_audit.index import Location
from symbi_audit.log import AuditLog
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import audit_pb2

OUTCOMES = {"success": 1, "failure": 2, "denied": 3}
GROUPS = {"agent": "e.agent_id", "event_type": "e.event_type", "label": "l.label", "outcome": "e.outcome"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    event_types: list[str] = []
    labels: list[str] = []
    outcome: Literal["success", "failure", "denied"] | None = None
    group_by: Literal["agent", "event_type", "label", "outcome"] = "agent"
    rows: int = Field(default=20, ge=0, le=1000)


class Definition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str
    description: str = ""
    sections: list[Section] = Field(min_length=1)


KEY_EVENTS = Section(id="key-events", title="Log and key events", event_types=["audit.*"], group_by="event_type")
DENIALS = Section(
    id="policy-denials", title="Policy denials", event_types=["policy.decision"], outcome="denied", group_by="agent"
)
BUILTIN: dict[str, Definition] = {
    "hipaa": Definition(
        name="hipaa",
        title="HIPAA audit controls (45 CFR 164.312(b))",
        description="Access to protected health information, refusals, tool use with PHI, key events.",
        sections=[
            Section(id="phi-access", title="Agents that touched PHI", labels=["phi"], group_by="agent"),
            Section(id="phi-denials", title="Refused access to PHI", labels=["phi"], outcome="denied"),
            Section(id="phi-tools", title="Tool calls involving PHI", labels=["phi"], event_types=["tool.*"]),
            DENIALS,
            KEY_EVENTS,
        ],
    ),
    "gdpr": Definition(
        name="gdpr",
        title="GDPR records of processing (Art. 30)",
        description="Processing of personal data by agent and kind, refused flows, erasures, key events.",
        sections=[
            Section(id="personal-data", title="Processing of personal data by agent", labels=["pii"]),
            Section(
                id="personal-data-kinds",
                title="Processing of personal data by kind",
                labels=["pii"],
                group_by="event_type",
            ),
            Section(id="refused-flows", title="Refused flows of personal data", labels=["pii"], outcome="denied"),
            Section(id="erasures", title="Erasures", event_types=["context.deleted", "data.deleted"]),
            KEY_EVENTS,
        ],
    ),
    "sox": Definition(
        name="sox",
        title="SOX IT general controls (change management and access)",
        description="Policy changes, administrative actions, financial data access, approvals, key events.",
        sections=[
            Section(
                id="policy-changes",
                title="Policy changes",
                event_types=["policy.registered", "policy.deleted"],
                group_by="event_type",
            ),
            Section(
                id="admin", title="Administrative actions", event_types=["admin.*", "agent.*"], group_by="event_type"
            ),
            Section(id="financial", title="Access to financial data", labels=["financial"]),
            Section(id="approvals", title="Human approvals", event_types=["approval.*"]),
            DENIALS,
            KEY_EVENTS,
        ],
    ),
}


def definition_for(request: audit_pb2.ComplianceReportRequest) -> Definition:
    if request.framework in BUILTIN and not request.definition:
        return BUILTIN[request.framework]
    if not request.definition:
        raise InvalidArgumentError(
            f"unknown framework {request.framework!r}: use {', '.join(BUILTIN)} or give a definition"
        )
    try:
        return Definition.model_validate(yaml.safe_load(request.definition))
    except (yaml.YAMLError, ValidationError) as exc:
        raise InvalidArgumentError(f"bad report definition: {exc}") from None


def _nanos(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def _select(section: Section, since: int, until: int, tenant: str) -> tuple[str, list[Any]]:
    where: list[str] = ["e.ts >= ?", "e.ts < ?"]
    args: list[Any] = [since, until]
    if section.event_types:
        parts = []
        for pattern in section.event_types:
            if pattern.endswith(".*"):
                parts.append("substr(e.event_type, 1, ?) = ?")
                args.extend([len(pattern) - 1, pattern[:-1]])
            else:
                parts.append("e.event_type = ?")
                args.append(pattern)
        where.append("(" + " OR ".join(parts) + ")")
    if section.outcome:
        where.append("e.outcome = ?")
        args.append(OUTCOMES[section.outcome])
    if tenant:
        where.append("e.tenant = ?")
        args.append(tenant)
    joined = section.labels or section.group_by == "label"
    source = "events e JOIN labels l ON l.sequence = e.sequence" if joined else "events e"
    if section.labels:
        where.append(f"l.label IN ({','.join('?' * len(section.labels))})")
        args.extend(section.labels)
    return f"FROM {source} WHERE {' AND '.join(where)}", args


def _section(view: AuditLog, section: Section, since: int, until: int, tenant: str) -> dict[str, Any]:
    body, args = _select(section, since, until, tenant)
    db = view.index.db
    column = GROUPS[section.group_by]
    count_sql = f"SELECT COUNT(DISTINCT e.sequence) {body}"
    group_sql = f"SELECT {column}, COUNT(DISTINCT e.sequence) {body} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 100"
    rows_sql = f"SELECT DISTINCT e.sequence, e.segment, e.offset {body} ORDER BY e.sequence LIMIT ?"
    total = int(db.execute(count_sql, args).fetchone()[0])
    groups = db.execute(group_sql, args).fetchall()
    located = db.execute(rows_sql, [*args, section.rows]).fetchall()
    rows = [_row(event) for event in view.read([Location(*row) for row in located])]
    named = {_group_name(section, key): int(count) for key, count in groups}
    return {
        "id": section.id,
        "title": section.title,
        "count": total,
        "by": section.group_by,
        "groups": named,
        "rows": rows,
    }


def _group_name(section: Section, key: Any) -> str:
    if section.group_by == "outcome":
        return {1: "success", 2: "failure", 3: "denied"}.get(int(key), "unspecified")
    return str(key or "(none)")


def _row(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    details = canonical.struct_to_python(event.details)
    when = dt.datetime.fromtimestamp(event.timestamp.seconds, dt.UTC).isoformat()
    outcome = {1: "success", 2: "failure", 3: "denied"}.get(int(event.outcome), "")
    summary = details.get("reason") or details.get("resource_id") or details.get("policy_id") or ""
    return {
        "sequence": event.sequence,
        "time": when,
        "agent": event.agent_id,
        "type": event.event_type,
        "outcome": outcome,
        "labels": list(event.data_labels),
        "summary": str(summary)[:200],
    }


def build_report(
    view: AuditLog, request: audit_pb2.ComplianceReportRequest, integrity: audit_pb2.VerifyResponse
) -> audit_pb2.ComplianceReportResponse:
    definition = definition_for(request)
    since = _nanos(request.since) if request.HasField("since") else 0
    until = _nanos(request.until) if request.HasField("until") else 2**63 - 1
    sections = [_section(view, section, since, until, request.tenant) for section in definition.sections]
    summary: dict[str, Any] = {
        "framework": definition.name,
        "title": definition.title,
        "description": definition.description,
        "log_id": view.log_id,
        "log_size": view.size,
        "range": {"since_ns": since, "until_ns": until},
        "tenant": request.tenant,
        "sections": sections,
        "integrity": {
            "ok": integrity.ok,
            "events_checked": integrity.events_checked,
            "checkpoints_checked": integrity.checkpoints_checked,
            "failure": integrity.failure.detail if not integrity.ok else "",
        },
    }
    response = audit_pb2.ComplianceReportResponse(framework=definition.name, integrity=integrity)
    ParseDict(summary, response.summary)
    response.generated_at.GetCurrentTime()
    fmt = request.format or audit_pb2.REPORT_FORMAT_JSON
    if fmt == audit_pb2.REPORT_FORMAT_MARKDOWN:
        response.document, response.media_type = markdown(summary).encode(), "text/markdown"
    elif fmt == audit_pb2.REPORT_FORMAT_HTML:
        response.document, response.media_type = render_html(summary).encode(), "text/html"
    else:
        response.document, response.media_type = json.dumps(summary, indent=2).encode(), "application/json"
    return response


def markdown(summary: dict[str, Any]) -> str:
    integrity = summary["integrity"]
    state = "verified" if integrity["ok"] else f"FAILED: {integrity['failure']}"
    lines = [
        f"# {summary['title']}",
        "",
        summary["description"],
        "",
        f"Log `{summary['log_id']}`, {summary['log_size']} events. Integrity: **{state}** "
        f"({integrity['events_checked']} events, {integrity['checkpoints_checked']} checkpoints checked).",
    ]
    for section in summary["sections"]:
        lines += ["", f"## {section['title']}", "", f"{section['count']} events."]
        if section["groups"]:
            lines += ["", f"| {section['by']} | events |", "|---|---|"]
            lines += [f"| {_md(key)} | {count} |" for key, count in section["groups"].items()]
        if section["rows"]:
            lines += ["", "| # | time | agent | type | outcome | labels | summary |", "|---|---|---|---|---|---|---|"]
            lines += [
                f"| {r['sequence']} | {r['time']} | {_md(r['agent'])} | {_md(r['type'])} | {r['outcome']} | "
                f"{_md(', '.join(r['labels']))} | {_md(r['summary'])} |"
                for r in section["rows"]
            ]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    integrity = summary["integrity"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(summary['title'])}</title></head><body>",
        f"<h1>{esc(summary['title'])}</h1><p>{esc(summary['description'])}</p>",
        f"<p>Log <code>{esc(summary['log_id'])}</code>, {summary['log_size']} events. Integrity: "
        f"<strong>{'verified' if integrity['ok'] else 'FAILED: ' + esc(integrity['failure'])}</strong></p>",
    ]
    for section in summary["sections"]:
        parts.append(f"<h2>{esc(section['title'])}</h2><p>{section['count']} events.</p>")
        if section["groups"]:
            cells = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in section["groups"].items())
            parts.append(f"<table><tr><th>{esc(section['by'])}</th><th>events</th></tr>{cells}</table>")
        if section["rows"]:
            head = "".join(f"<th>{h}</th>" for h in ("#", "time", "agent", "type", "outcome", "summary"))
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td>{esc(str(r[k]))}</td>" for k in ("sequence", "time", "agent", "type", "outcome", "summary")
                )
                + "</tr>"
                for r in section["rows"]
            )
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
