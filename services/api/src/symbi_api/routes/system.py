"""/v1/system/status: one view of the whole system, gathered from every service at once.

Each part (service health, agents by state, the scheduler's queues and workers, the
audit log's latest checkpoint, the message bus's counters, the policies in force) is
asked for concurrently with a short deadline; a part that cannot be had is reported
with its error, and the overall status is then ``degraded`` rather than the call failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from symbi_api.auth import require
from symbi_api.health import health_report
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import JsonObject
from symbi_api.runtime import Api, api, to_json
from symbi_common import subjects
from symbi_common.errors import from_exception
from symbi_common.scheduler_client import SchedulerClient
from symbi_proto.v1 import audit_pb2, message_pb2

router = APIRouter(prefix="/v1/system", tags=["system"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("system:read"))]
PART_TIMEOUT_S = 3.0


async def _part(fetch: Callable[[], Awaitable[Any]]) -> JsonObject:
    try:
        async with asyncio.timeout(PART_TIMEOUT_S):
            return {"ok": True, "value": await fetch()}
    except Exception as exc:
        err = from_exception(exc)
        return {"ok": False, "error": {"code": err.code, "message": err.message}}


@router.get("/status", summary="Health, agents, scheduler, audit, messaging and policies at a glance")
async def status(caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    scheduler = SchedulerClient(a.nc, timeout_s=PART_TIMEOUT_S, actor=caller.name)

    async def health() -> JsonObject:
        return (await health_report(a.nc, a.expected_services))[0]

    async def agents() -> JsonObject:
        counts = await a.lifecycle(caller).counts()
        return to_json(counts)

    async def checkpoint() -> JsonObject:
        cp = await a.ask(subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint)
        return {"tree_size": cp.tree_size, "root_hash": cp.root_hash.hex(), "key_id": cp.key_id, "log_id": cp.log_id}

    async def messaging() -> JsonObject:
        return to_json(await a.ask(subjects.BUS_STATS, message_pb2.BusStatsRequest(), message_pb2.MessagingStats))

    async def policies() -> JsonObject:
        found = await a.policy.list()
        return {"count": len(found), "ids": [p.id for p in found]}

    async def sched() -> JsonObject:
        return to_json(await scheduler.status())

    names = ("services", "agents", "scheduler", "audit", "messaging", "policies")
    fetches = (health, agents, sched, checkpoint, messaging, policies)
    parts = await asyncio.gather(*(_part(f) for f in fetches))
    body: JsonObject = dict(zip(names, parts, strict=True))
    services_ok = body["services"]["ok"] and body["services"]["value"]["status"] == "ok"
    body["status"] = "ok" if services_ok and all(p["ok"] for p in parts) else "degraded"
    return body
