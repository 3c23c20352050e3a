"""The API aggregates health from every service over NATS."""

from __future__ import annotations

import httpx
import pytest
from nats.aio.client import Client
from symbi_testing.checks import health_of
from symbi_testing.fixtures import RunService

from symbi_common import catalog
from symbi_common.settings import Settings

pytestmark = pytest.mark.integration


async def api_url(nc: Client) -> str:
    return (await health_of(nc, "api")).endpoints["http"]


async def test_health_names_missing_services(run_service: RunService, nc: Client) -> None:
    await run_service(catalog.load("api"))
    async with httpx.AsyncClient(base_url=await api_url(nc), timeout=5) as http:
        live = await http.get("/health/live")
        ready = await http.get("/health/ready")
        health = await http.get("/health")
        openapi = await http.get("/openapi.json")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "degraded"
    assert "api" in body["services"]
    assert "policy" in body["missing"]
    assert openapi.status_code == 200
    assert "/health" in openapi.json()["paths"]


async def test_health_ok_when_every_service_runs(
    run_service: RunService, nc: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    for name in catalog.SERVICE_NAMES:
        await run_service(catalog.load(name))
    async with httpx.AsyncClient(base_url=await api_url(nc), timeout=5) as http:
        health = await http.get("/health")
    body = health.json()
    assert health.status_code == 200, body
    assert body["missing"] == []
    assert body["not_ready"] == []
    assert set(body["services"]) >= set(catalog.SERVICE_NAMES)
    assert body["services"]["sandbox-orchestrator"]["status"] == "degraded"
    assert body["services"]["policy"]["status"] == "serving"
