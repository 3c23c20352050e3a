"""The FastAPI application: health endpoints now; resource routes grow with each service.

``/health`` aggregates every service's replicas over NATS (``symbi.health.all``):
200 when each service has a ready replica, 503 naming what is missing otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client

from symbi_common import __version__, fleet
from symbi_common.catalog import SERVICE_NAMES
from symbi_common.health import is_ready, status_name
from symbi_proto.v1 import health_pb2

HEALTH_WINDOW_S = 0.5


def build_app(nc: Client, ready: Callable[[], bool], expected: tuple[str, ...] = SERVICE_NAMES) -> FastAPI:
    app = FastAPI(
        title="Symbi API",
        version=__version__,
        description="Policy-aware runtime for autonomous agents. Every call is decided by policy and audited.",
    )

    @app.get("/health/live", tags=["health"], summary="The API process is running")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"], summary="The API is connected and ready")
    async def readiness() -> JSONResponse:
        ok = ready() and nc.is_connected
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    @app.get("/health", tags=["health"], summary="Health of every service, aggregated over NATS")
    async def health() -> JSONResponse:
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
                name: {
                    "status": status_name(min(r.status for r in reps)),
                    "replicas": [MessageToDict(r, preserving_proto_field_name=True) for r in reps],
                }
                for name, reps in sorted(by_service.items())
            },
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
