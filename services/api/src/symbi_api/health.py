"""Health without a key: ``/health/live``, ``/health/ready`` and ``/health`` (every service, over NATS).

``/health`` is 200 when each expected service has a ready replica and 503 naming what
is missing or not ready otherwise; each replica's ``HealthStatus`` (per-component
status, resource use, recent errors, endpoints) is included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from nats.aio.client import Client

from symbi_api.runtime import Api, to_json
from symbi_common import fleet
from symbi_common.health import is_ready, status_name
from symbi_proto.v1 import health_pb2

HEALTH_WINDOW_S = 0.5
router = APIRouter(tags=["health"])


async def health_report(nc: Client, expected: Sequence[str]) -> tuple[dict[str, Any], bool]:
    replies = await fleet.collect(nc, window_s=HEALTH_WINDOW_S, expect=expected)
    by_service: dict[str, list[health_pb2.HealthStatus]] = {}
    for status in replies:
        by_service.setdefault(status.service, []).append(status)
    missing = [name for name in expected if name not in by_service]
    not_ready = sorted(name for name, reps in by_service.items() if not any(is_ready(r) for r in reps))
    ok = not missing and not not_ready
    body = {
        "status": "ok" if ok else "degraded",
        "missing": missing,
        "not_ready": not_ready,
        "services": {
            name: {"status": status_name(min(r.status for r in reps)), "replicas": [to_json(r) for r in reps]}
            for name, reps in sorted(by_service.items())
        },
    }
    return body, ok


@router.get("/health/live", summary="The API process is running")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready", summary="The API is connected and ready")
async def readiness(request: Request) -> JSONResponse:
    a: Api = request.app.state.api
    ok = a.ready() and a.nc.is_connected
    return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)


@router.get("/health", summary="Health of every service, aggregated over NATS")
async def health(request: Request) -> JSONResponse:
    a: Api = request.app.state.api
    body, ok = await health_report(a.nc, a.expected_services)
    return JSONResponse(body, status_code=200 if ok else 503)
