"""/v1/audit: query, live stream (server-sent events), verify, checkpoints, proofs, keys, reports.

Every call goes to the audit service's request subjects (``symbi.auditq.*``); the
stream listens to what the writer announces after each append
(``symbi.auditlog.appended``, and ``symbi.auditlog.checkpoint`` when asked). A key
with a tenant sees only its tenant's events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from pydantic import Field

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import MAX_UINT, Body, JsonObject, PageSize
from symbi_api.runtime import Api, api, to_json
from symbi_common import subjects
from symbi_common.errors import InvalidArgumentError, NotFoundError
from symbi_proto.v1 import audit_pb2, common_pb2

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("audit:read"))]
Text = Annotated[str, Query(max_length=256)]
REPORT_FORMATS = {
    "json": audit_pb2.REPORT_FORMAT_JSON,
    "md": audit_pb2.REPORT_FORMAT_MARKDOWN,
    "html": audit_pb2.REPORT_FORMAT_HTML,
}
OUTCOMES = {
    "success": audit_pb2.AUDIT_OUTCOME_SUCCESS,
    "failure": audit_pb2.AUDIT_OUTCOME_FAILURE,
    "denied": audit_pb2.AUDIT_OUTCOME_DENIED,
}
STREAM_QUEUE = 1000
# The log indexes times as int64 nanoseconds since 1970: what a query may ask for.
EARLIEST, LATEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2262, 1, 1, tzinfo=dt.UTC)
AuditPageToken = Annotated[str, Query(pattern=r"^[0-9]{0,18}$", description="next_page_token of the previous page")]


def _stamp(when: dt.datetime | None, target: Timestamp) -> None:
    if when is None:
        return
    aware = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    if not EARLIEST <= aware < LATEST:
        raise InvalidArgumentError(f"{when.isoformat()} is outside the log's time range (1970 to 2262)")
    target.FromDatetime(aware)


@router.get("/events", summary="Query events (oldest first unless newest_first)")
async def query(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    agent_id: Text = "",
    event_type: Annotated[list[str] | None, Query(description="exact types or prefixes like tool.*")] = None,
    since: Annotated[dt.datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[dt.datetime | None, Query(description="exclusive, ISO 8601")] = None,
    correlation_id: Text = "",
    outcome: Literal["success", "failure", "denied"] | None = None,
    newest_first: bool = False,
    page_size: PageSize = 100,
    page_token: AuditPageToken = "",
) -> JsonObject:
    request = audit_pb2.AuditQueryRequest(
        agent_id=agent_id,
        event_types=event_type or [],
        correlation_id=correlation_id,
        descending=newest_first,
        tenant=caller.tenant,
        outcome=OUTCOMES[outcome] if outcome else audit_pb2.AUDIT_OUTCOME_UNSPECIFIED,
        page=common_pb2.PageRequest(page_size=page_size, page_token=page_token),
    )
    _stamp(since, request.since)
    _stamp(until, request.until)
    reply = await a.ask(subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse)
    return {
        "events": [to_json(e) for e in reply.events],
        "next_page_token": reply.page.next_page_token,
        "total": reply.page.total_size,
    }


@router.get(
    "/stream",
    summary="Events as they are appended (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`event: audit` (and `checkpoint`) lines"}},
)
async def stream(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    agent_id: Text = "",
    event_type: Annotated[list[str] | None, Query(description="exact types or prefixes like tool.*")] = None,
    checkpoints: Annotated[bool, Query(description="also send each new signed checkpoint")] = False,
    max_events: Annotated[int, Query(ge=0, le=1_000_000, description="end the stream after this many (0: never)")] = 0,
) -> StreamingResponse:
    types = list(event_type or [])
    queue: asyncio.Queue[tuple[str, JsonObject]] = asyncio.Queue(STREAM_QUEUE)
    dropped = 0

    def wanted(event: audit_pb2.AuditEvent) -> bool:
        if (agent_id and event.agent_id != agent_id) or (caller.tenant and event.tenant != caller.tenant):
            return False
        return not types or any(
            event.event_type == t or (t.endswith(".*") and event.event_type.startswith(t[:-1])) for t in types
        )

    def offer(kind: str, doc: JsonObject) -> None:
        nonlocal dropped
        try:
            queue.put_nowait((kind, doc))
        except asyncio.QueueFull:
            dropped += 1

    async def on_batch(msg: Msg) -> None:
        for event in audit_pb2.AuditBatch.FromString(msg.data).events:
            if wanted(event):
                offer("audit", to_json(event))

    async def on_checkpoint(msg: Msg) -> None:
        offer("checkpoint", to_json(audit_pb2.Checkpoint.FromString(msg.data)))

    subs = [await a.nc.subscribe(subjects.AUDIT_APPENDED, cb=on_batch)]
    if checkpoints:
        subs.append(await a.nc.subscribe(subjects.AUDIT_CHECKPOINT_FEED, cb=on_checkpoint))
    await a.nc.flush(timeout=max(1, round(a.timeout_s)))
    heartbeat = a.settings.api.stream_heartbeat_s

    async def body() -> AsyncIterator[str]:
        nonlocal dropped
        sent = 0
        try:
            yield ": subscribed\n\n"
            while not max_events or sent < max_events:
                try:
                    kind, doc = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if dropped:
                    yield f"event: dropped\ndata: {json.dumps({'dropped': dropped})}\n\n"
                    dropped = 0
                ident = doc.get("event_id", "") if kind == "audit" else doc.get("tree_size", "")
                yield f"event: {kind}\nid: {ident}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n"
                sent += 1
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    await sub.unsubscribe()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/verify", summary="Verify the log's hash chain, Merkle tree and signed checkpoints")
async def verify(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    from_sequence: Annotated[int, Query(ge=0, le=MAX_UINT)] = 0,
    to_sequence: Annotated[int | None, Query(ge=0, le=MAX_UINT, description="exclusive; default: the end")] = None,
    signatures: Annotated[bool, Query(description="also check every event's signature (slower)")] = False,
) -> JsonObject:
    request = audit_pb2.VerifyRequest(from_sequence=from_sequence, verify_event_signatures=signatures)
    if to_sequence is not None:
        request.to_sequence = to_sequence
    return to_json(await a.ask(subjects.AUDIT_VERIFY, request, audit_pb2.VerifyResponse))


@router.get("/checkpoints", summary="Signed checkpoints, oldest first")
async def checkpoints(
    caller: Read, a: Annotated[Api, Depends(api)], page_size: PageSize = 100, page_token: AuditPageToken = ""
) -> JsonObject:
    request = audit_pb2.ListCheckpointsRequest(page=common_pb2.PageRequest(page_size=page_size, page_token=page_token))
    reply = await a.ask(subjects.AUDIT_CHECKPOINTS, request, audit_pb2.ListCheckpointsResponse)
    return {
        "checkpoints": [to_json(c) for c in reply.checkpoints],
        "next_page_token": reply.page.next_page_token,
        "total": reply.page.total_size,
    }


@router.get("/checkpoints/latest", summary="The latest signed checkpoint (or the first covering tree_size)")
async def checkpoint(
    caller: Read, a: Annotated[Api, Depends(api)], tree_size: Annotated[int, Query(ge=0, le=MAX_UINT)] = 0
) -> JsonObject:
    request = audit_pb2.GetCheckpointRequest(tree_size=tree_size)
    return to_json(await a.ask(subjects.AUDIT_CHECKPOINT, request, audit_pb2.Checkpoint))


@router.get("/proofs/inclusion", summary="Prove one event is in the log (RFC 9162 inclusion proof)")
async def inclusion(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    event_id: Text = "",
    sequence: Annotated[int | None, Query(ge=0, le=MAX_UINT)] = None,
    tree_size: Annotated[int, Query(ge=0, le=MAX_UINT, description="the checkpoint to prove against (0: latest)")] = 0,
) -> JsonObject:
    if bool(event_id) == (sequence is not None):
        raise InvalidArgumentError("give exactly one of event_id and sequence")
    request = audit_pb2.InclusionProofRequest(tree_size=tree_size)
    if event_id:
        request.event_id = event_id
    else:
        request.sequence = sequence or 0
    reply = await a.ask(subjects.AUDIT_INCLUSION, request, audit_pb2.InclusionProofResponse)
    if caller.tenant and reply.event.tenant != caller.tenant:
        raise NotFoundError("no such event")
    return to_json(reply)


@router.get("/proofs/consistency", summary="Prove a later checkpoint extends an earlier one")
async def consistency(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    first: Annotated[int, Query(ge=1, le=MAX_UINT, description="tree size of the earlier checkpoint")],
    second: Annotated[int, Query(ge=0, le=MAX_UINT, description="tree size of the later one (0: latest)")] = 0,
) -> JsonObject:
    request = audit_pb2.ConsistencyProofRequest(first_tree_size=first, second_tree_size=second)
    return to_json(await a.ask(subjects.AUDIT_CONSISTENCY, request, audit_pb2.ConsistencyProofResponse))


@router.get("/keys", summary="The log's public signing keys")
async def keys(caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    reply = await a.ask(subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest(), audit_pb2.ListSigningKeysResponse)
    return {"keys": [to_json(k) for k in reply.keys]}


class ReportRequest(Body):
    framework: str = Field(min_length=1, max_length=64, description="hipaa, gdpr, sox, or a name for definition")
    definition: str = Field(default="", max_length=256 * 1024, description="a report definition (YAML)")
    format: Literal["json", "md", "html"] = "json"
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@router.post(
    "/reports",
    summary="Build a compliance report (the document itself, in its format)",
    response_class=Response,
    responses={
        200: {
            "content": {"application/json": {}, "text/markdown": {}, "text/html": {}},
            "description": "the report; X-Symbi-Integrity says whether the log verified",
        }
    },
)
async def report(body: ReportRequest, caller: Read, a: Annotated[Api, Depends(api)]) -> Response:
    request = audit_pb2.ComplianceReportRequest(
        framework=body.framework, definition=body.definition, format=REPORT_FORMATS[body.format], tenant=caller.tenant
    )
    _stamp(body.since, request.since)
    _stamp(body.until, request.until)
    reply = await a.ask(subjects.AUDIT_REPORT, request, audit_pb2.ComplianceReportResponse)
    headers = {"X-Symbi-Integrity": "ok" if reply.integrity.ok else "failed", "X-Symbi-Framework": reply.framework}
    return Response(reply.document, media_type=reply.media_type or "application/octet-stream", headers=headers)
