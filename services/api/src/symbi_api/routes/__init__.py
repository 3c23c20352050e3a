"""The /v1 route groups, one module each; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from symbi_api.routes import agents, audit, context, keys, messaging, policies, system, tools

ROUTERS: tuple[APIRouter, ...] = (
    agents.router,
    policies.router,
    audit.router,
    context.router,
    tools.router,
    messaging.router,
    system.router,
    keys.router,
)
