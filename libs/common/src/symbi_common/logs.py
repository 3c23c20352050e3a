"""JSON logging with OpenTelemetry trace and span ids on every record.

One record per line: ``time``, ``level``, ``logger``, ``message``, ``service``,
``instance``, ``trace_id``, ``span_id``, extras passed with ``extra=``, and
``exc`` for exceptions. ``console`` format is the same data for people.
Audit events are data sent to the audit service, not log lines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def current_trace_ids() -> tuple[str, str]:
    """Hex trace and span id of the active span, or empty strings."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "", instance: str = "") -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_trace_ids()
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.service:
            doc["service"] = self.service
        if self.instance:
            doc["instance"] = self.instance
        if trace_id:
            doc["trace_id"] = trace_id
            doc["span_id"] = span_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id, _ = current_trace_ids()
        return f"{line} [trace={trace_id[:16]}]" if trace_id else line


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    *,
    service: str = "",
    instance: str = "",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the root logger to one handler on ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service, instance) if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_symbi_owned", False):
            root.removeHandler(old)
    handler._symbi_owned = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("nats", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
