"""Retry policy, background-task supervisor, and JSON logs with trace ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from symbi_common.errors import DeadlineExceededError, NotFoundError, UnavailableError
from symbi_common.logs import JsonFormatter, configure_logging
from symbi_common.retry import RetryPolicy, retry
from symbi_common.supervisor import Supervisor

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.005, deadline_s=2.0)


async def test_retry_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise UnavailableError("not yet")
        return "done"

    assert await retry(flaky, FAST, what="flaky") == "done"
    assert calls == 4


async def test_non_retryable_error_escapes_at_once() -> None:
    calls = 0

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError("no such thing")

    with pytest.raises(NotFoundError):
        await retry(missing, FAST, what="missing")
    assert calls == 1


async def test_deadline_ends_retrying() -> None:
    async def down() -> None:
        raise UnavailableError("down")

    policy = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=0.05)
    with pytest.raises(DeadlineExceededError, match="gave up after"):
        await retry(down, policy, what="down")


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


async def test_supervisor_reports_failures_and_cancels_the_rest() -> None:
    failures: list[tuple[str, str]] = []
    supervisor = Supervisor(on_failure=lambda name, exc: failures.append((name, str(exc))))

    async def boom() -> None:
        raise RuntimeError("kaput")

    forever = supervisor.spawn(asyncio.sleep(3600), name="sleeper")
    supervisor.spawn(boom(), name="boom")
    await asyncio.sleep(0.01)
    assert failures == [("boom", "kaput")]
    assert supervisor.running == 1
    await supervisor.aclose(grace_s=1)
    assert forever.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn(asyncio.sleep(0), name="late")


def test_json_log_lines_carry_trace_ids_and_extras() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", service="svc", instance="svc-1", stream=stream)
    try:
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("op") as span:
            logging.getLogger("symbi.test").info("hello %s", "world", extra={"agent_id": "a1"})
            expected_trace = f"{span.get_span_context().trace_id:032x}"
        doc = json.loads(stream.getvalue().strip().splitlines()[-1])
    finally:
        logging.getLogger().removeHandler(handler)
    assert doc["message"] == "hello world"
    assert doc["service"] == "svc"
    assert doc["instance"] == "svc-1"
    assert doc["trace_id"] == expected_trace
    assert len(doc["span_id"]) == 16
    assert doc["agent_id"] == "a1"
    assert doc["level"] == "INFO"


def test_json_log_includes_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    try:
        raise ValueError("inner")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: inner" in doc["exc"]
    assert "trace_id" not in doc
