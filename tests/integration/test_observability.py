"""Operators can see into a running Symbi: traces across services, JSON logs with trace ids, metrics.

- One client request is one trace: scheduling an agent from its definition runs through the
  scheduler, the lifecycle service and the policy service (gRPC), and a document ingested in
  the same trace through the context service, the lifecycle service and policy again; every
  span shares the client's trace id, each hop's server span continues the caller's span
  (carried in NATS headers or gRPC metadata), the audit events those steps record carry the
  trace id too, and a log line written while serving it is JSON with that trace id.
- Every service, running, exports on ``/metrics`` the series ``KEY_SERIES`` lists, and every
  metric and label the Grafana dashboard queries is one some running service exports.
- A service process exports its spans over OTLP/HTTP to ``[telemetry].otlp_endpoint``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService
from symbi_testing.observability import (
    COMMON,
    KEY_SERIES,
    Exposition,
    dashboard_queries,
    labels_in,
    load_dashboard,
    metrics_in,
    parse_exposition,
)

from symbi_api.service import SPEC as API
from symbi_audit.service import SPEC as AUDIT
from symbi_common import natsio, subjects, telemetry
from symbi_common.context_client import ContextClient
from symbi_common.logs import JsonFormatter
from symbi_common.policy_client import PolicyClient
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_context.service import SPEC as CONTEXT
from symbi_lifecycle import definitions
from symbi_mcp_gateway.service import SPEC as MCP_GATEWAY
from symbi_proto.v1 import audit_pb2, common_pb2, context_pb2, health_pb2, scheduler_pb2, task_pb2, tools_pb2

from .conftest import AgentStack, agent_source

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "symbi-overview.json"
# Labels Prometheus adds to every scraped series (job and instance; namespace, pod, service on Kubernetes).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "le"}
MEMORY = """
id: observability-tests
rules:
  - name: own-memory
    effect: allow
    actions: [data_access]
    operations: [read, write, delete]
    resources: [memory, working]
    when: resource.owner == subject.id
"""
HANDBOOK = "# Backups\n\nBackups are kept for thirty days and tested every week.\n"


async def allow_own_memory(settings: Settings) -> None:
    client = PolicyClient(settings.policy.addr)
    try:
        await client.register(MEMORY, name="observability-tests.yaml")
    finally:
        await client.close()


def context_settings(settings: Settings) -> Settings:
    return settings.with_overrides({"policy.cache_size": 0})


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What Symbi's own loggers write during the test, as the services' JSON log lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("pytest", "in-process"))
    loggers = [logging.getLogger(name) for name in ("symbi_context", "symbi_lifecycle", "symbi_scheduler")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


# One trace across services ---------------------------------------------------------------


def owner(span: ReadableSpan) -> str:
    """The service that served a server span: gRPC policy methods, or the owner of a NATS subject."""
    if span.name.startswith("/symbi.v1.PolicyService/"):
        return "policy"
    subject = span.name.removeprefix("handle ")
    for service, prefix in (("scheduler", "symbi.scheduler."), ("lifecycle", "symbi.lifecycle."),
                            ("context", "symbi.context.")):  # fmt: skip
        if subject.startswith(prefix):
            return service
    return ""


async def test_one_request_is_one_trace_across_services(
    agent_stack: AgentStack,
    run_service: RunService,
    nc: Client,
    span_exporter: InMemorySpanExporter,
    json_log: io.StringIO,
) -> None:
    await run_service(AUDIT, agent_stack.settings)
    await allow_own_memory(agent_stack.settings)
    await run_service(CONTEXT, context_settings(agent_stack.settings))

    built = definitions.load(agent_source("traced"))
    assert not built.issues
    definition = built.definition
    with telemetry.tracer().start_as_current_span("operator request", kind=SpanKind.CLIENT) as root:
        request = scheduler_pb2.ScheduleAgentRequest(definition=definition, requested_by="tester")
        scheduled = await natsio.request(
            nc, subjects.scheduler("schedule"), request, scheduler_pb2.ScheduleAgentResponse, timeout=20
        )
        ingest = context_pb2.IngestDocumentRequest(
            agent_id=scheduled.agent_id,
            kind=context_pb2.MEMORY_KIND_LONG_TERM,
            source="handbook.md",
            content=HANDBOOK.encode(),
        )
        ingested = await ContextClient(nc, timeout_s=30).ingest(ingest)
    assert scheduled.task_id
    assert ingested.chunks >= 1
    trace_id = root.get_span_context().trace_id

    spans = [s for s in span_exporter.get_finished_spans() if s.context is not None]
    ours = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in ours}
    served = [s for s in ours if s.kind == SpanKind.SERVER and owner(s)]
    assert {owner(s) for s in served} >= {"scheduler", "lifecycle", "policy", "context"}
    for span in served:  # each hop continued its caller's span, received over the wire
        assert span.parent is not None, span.name
        assert span.parent.is_remote, span.name
        assert span.parent.trace_id == trace_id
        assert span.parent.span_id in by_id, f"{span.name}'s parent is not part of the trace"

    def chain(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(owner(span) if span.kind == SpanKind.SERVER else span.name)
        return names

    # The agent_create decision: policy (gRPC metadata) <- lifecycle <- scheduler (NATS headers) <- the client.
    (create,) = [s for s in served if s.name == f"handle {subjects.lifecycle('create')}"]
    decided = [s for s in served if owner(s) == "policy" and s.parent.span_id == create.context.span_id]  # type: ignore[union-attr]
    assert decided, "the lifecycle service's policy call did not continue its trace"
    assert chain(decided[0]) == [
        "lifecycle", f"request {subjects.lifecycle('create')}", "scheduler",
        f"request {subjects.scheduler('schedule')}", "operator request",
    ]  # fmt: skip
    # The ingest: context asked lifecycle (who is this agent?) and policy (may it write?) in the same trace.
    (handled,) = [s for s in served if s.name == f"handle {subjects.context('ingest')}"]
    below = {owner(s) for s in served if handled.context.span_id in _ancestors(s, by_id)}
    assert below >= {"lifecycle", "policy"}

    # The audit trail ties in: events recorded while serving the request carry its trace id.
    hex_id = f"{trace_id:032x}"

    async def audited() -> set[str]:
        reply = await natsio.request(
            nc, subjects.AUDIT_QUERY,
            audit_pb2.AuditQueryRequest(page=common_pb2.PageRequest(page_size=1000)),
            audit_pb2.AuditQueryResponse, timeout=10,
        )  # fmt: skip
        return {e.event_type for e in reply.events if e.trace_id == hex_id}

    await eventually(lambda: _has(audited, {"agent.created", "task.admitted"}), what="audit events with the trace id")

    # A log line written while serving the request is JSON and names the trace.
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    (line,) = [doc for doc in lines if doc["message"].startswith("ingested handbook.md")]
    assert line["trace_id"] == hex_id
    assert line["span_id"] in {f"{s.context.span_id:016x}" for s in ours}
    assert line["logger"] == "symbi_context.documents"


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> set[int]:
    found = set()
    while span.parent is not None and span.parent.span_id in by_id:
        found.add(span.parent.span_id)
        span = by_id[span.parent.span_id]
    return found


async def _has(fetch: object, wanted: set[str]) -> bool:
    got = await fetch()  # type: ignore[operator]
    return bool(wanted <= got)


# Metrics from every running service ----------------------------------------------------


@pytest_asyncio.fixture
async def fleet(agent_stack: AgentStack, run_service: RunService) -> AsyncIterator[dict[str, ServiceRunner]]:
    """All eight services, in-process, each with its own /metrics endpoint."""
    settings = agent_stack.settings
    runners = dict(agent_stack.runners)  # policy, lifecycle, scheduler
    runners["audit"] = await run_service(AUDIT, settings)
    await allow_own_memory(settings)
    runners["context"] = await run_service(CONTEXT, context_settings(settings))
    runners["mcp-gateway"] = await run_service(MCP_GATEWAY, settings)
    runners["sandbox-orchestrator"] = await agent_stack.worker("obs-node")
    runners["api"] = await run_service(API, settings)
    assert set(runners) == set(KEY_SERIES)
    yield runners


async def scrape(runner: ServiceRunner) -> Exposition:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{runner.ops_port}/metrics")
    assert response.status_code == 200
    return parse_exposition(response.text)


async def drive(stack: AgentStack, nc: Client) -> None:
    """Traffic, so labelled series have samples: a task that runs, memory stored and searched, tools listed."""
    agent = await stack.agent("watched", seconds=0.2)
    task_id = await stack.run(agent.agent_id)
    assert (await stack.final(task_id)).state == task_pb2.TASK_STATE_SUCCEEDED
    context = ContextClient(nc, timeout_s=30)
    item = context_pb2.ContextItem(kind=context_pb2.MEMORY_KIND_LONG_TERM, content="backups are kept for 30 days")
    await context.store(context_pb2.StoreContextRequest(agent_id=agent.agent_id, item=item))
    await context.retrieve(context_pb2.RetrieveContextRequest(agent_id=agent.agent_id, query="backups"))
    await natsio.request(
        nc, subjects.tools("list"), tools_pb2.ListToolsRequest(), tools_pb2.ListToolsResponse, timeout=10
    )


async def test_every_running_service_exports_its_key_series_and_feeds_the_dashboard(
    fleet: dict[str, ServiceRunner], agent_stack: AgentStack, nc: Client
) -> None:
    await drive(agent_stack, nc)
    everything = Exposition()
    for service, runner in fleet.items():
        exported = await scrape(runner)
        missing = sorted(name for name in (*COMMON, *KEY_SERIES[service]) if name not in exported.names)
        assert missing == [], f"{service} does not export {missing}"
        everything.merge(exported)
    for name in ("symbi_policy_decisions_total", "symbi_scheduler_placements_total", "symbi_sandbox_starts_total",
                 "symbi_audit_events_appended_total", "symbi_context_items_stored_total", "symbi_agents",
                 "symbi_scheduler_decision_seconds_bucket", "symbi_scheduler_queue_wait_seconds_bucket"):  # fmt: skip
        assert name in everything.sampled, f"no samples of {name} after real traffic"

    for title, expr in dashboard_queries(load_dashboard(DASHBOARD)):
        for name in metrics_in(expr):
            assert name in everything.names, f"panel {title!r}: no service exports {name}"
        matched, grouped = labels_in(expr)
        for name, labels in matched.items():
            if name in everything.sampled:
                assert labels <= everything.labels[name], f"panel {title!r}: {name} has no label {labels}"
        seen = set().union(*(everything.labels.get(name, set()) for name in metrics_in(expr)))
        if all(name in everything.sampled for name in metrics_in(expr)):
            assert grouped <= seen | TARGET_LABELS, f"panel {title!r} groups by {grouped - seen - TARGET_LABELS}"


# OTLP export from a service process ------------------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    received: list[trace_service_pb2.ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def collector() -> Iterator[tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]]]:
    """A minimal OTLP/HTTP traces receiver on a free local port."""
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()


async def test_a_service_exports_its_spans_over_otlp(
    collector: tuple[str, list[trace_service_pb2.ExportTraceServiceRequest]],
    nats_url: str,
    nc: Client,
    tmp_path: Path,
    span_exporter: InMemorySpanExporter,
) -> None:
    endpoint, received = collector
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    env.update({
        "SYMBI_NATS_URL": nats_url, "SYMBI_OTLP_ENDPOINT": endpoint, "SYMBI_STATE_DIR": str(tmp_path),
        "SYMBI_METRICS_PORT": "0", "SYMBI_POLICY_PORT": "0",
    })  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "symbi_cli", "serve", "policy"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with telemetry.tracer().start_as_current_span("health probe") as probe:

            async def answered() -> bool:
                try:
                    status = await natsio.request(
                        nc, subjects.health("policy"), health_pb2.HealthRequest(), health_pb2.HealthStatus, timeout=2
                    )
                except Exception:
                    return False
                return bool(status.status == health_pb2.SERVING_STATUS_SERVING)

            await eventually(answered, timeout_s=60, what="the policy process answers health")
        trace_id = probe.get_span_context().trace_id.to_bytes(16, "big")
    finally:
        proc.send_signal(signal.SIGTERM)  # a graceful stop flushes the batch of spans
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    spans = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    ours = [(res, span) for res, span in spans if span.trace_id == trace_id]
    assert ours, f"no exported span continues the probe's trace ({len(spans)} spans received)"
    resource, span = ours[0]
    attributes = {kv.key: kv.value.string_value for kv in resource.attributes}
    assert attributes["service.name"] == "symbi-policy"
    assert span.name == f"handle {subjects.health('policy')}"
    log_lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(doc["message"].startswith("exporting traces over OTLP/HTTP") for doc in log_lines)
    assert all(doc["service"] == "policy" for doc in log_lines)
