"""The FastAPI application: health without a key, the versioned /v1 API behind API keys.

OpenAPI: ``/openapi.json``, browsable at ``/docs``. ``build_app`` takes everything the
routes need in one ``Api``; the service (``service.py``) builds it with live
connections, and tests do the same against real servers.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from symbi_api import health, problems
from symbi_api.auditing import RequestAuditor
from symbi_api.http_layer import ApiMetrics, HttpLayer
from symbi_api.routes import ROUTERS
from symbi_api.runtime import Api
from symbi_common import __version__

DESCRIPTION = """Policy-aware runtime for autonomous agents.

Every /v1 call needs an API key (`Authorization: Bearer <key>` or `X-API-Key: <key>`)
holding the scope the route names. Every mutating call is decided by policy (the
`admin` enforcement point) and recorded in the audit trail as an `api.request` event.
Errors always have the body `{"error": {"code", "message", "request_id", "details"}}`.
"""


def build_app(api: Api, *, registry: CollectorRegistry, auditor: RequestAuditor | None = None) -> FastAPI:
    app = FastAPI(title="Symbi API", version=__version__, description=DESCRIPTION)
    app.state.api = api
    problems.install(app)
    app.include_router(health.router)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        HttpLayer,
        max_body_bytes=api.settings.api.max_body_bytes,
        metrics=ApiMetrics(registry),
        on_done=auditor.record if auditor is not None else (lambda exchange: None),
        audit_has_room=auditor.has_room if auditor is not None else (lambda: True),
    )
    return app
