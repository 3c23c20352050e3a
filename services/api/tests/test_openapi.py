"""The API against its own OpenAPI schema (Schemathesis), and proof that the harness catches a 500."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from symbi_api import problems
from symbi_api.http_layer import ApiMetrics, HttpLayer

from .conftest import ApiStack
from .fuzzing import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

NOT_FUZZED = frozenset({"GET /v1/audit/stream"})  # an endless stream: tested in test_api_audit


async def test_every_operation_matches_its_schema(api_stack: ApiStack) -> None:
    http = api_stack.client()
    schema = (await http.get("/openapi.json")).json()
    assert {"/v1/agents", "/v1/policies", "/v1/audit/events", "/v1/tools", "/v1/system/status"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    token = await api_stack.key("admin", name="fuzzer", roles=("admin",), rate_limit_per_minute=1_000_000)
    headers = {"Authorization": f"Bearer {token}"}
    failures, sent = await asyncio.to_thread(fuzz, schema, api_stack.url, headers, skip=NOT_FUZZED)
    assert failures == [], "\n".join(failures)
    assert sent >= 10 * (len(schema["paths"]) - 1)


class Numbers(BaseModel):
    n: int


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_the_harness_finds_a_server_error() -> None:
    app = FastAPI()
    problems.install(app)

    @app.post("/half", responses=problems.ERROR_RESPONSES)
    async def half(body: Numbers) -> dict[str, float]:
        return {"half": 1 / (body.n % 7)}  # a bug: n divisible by 7 breaks it

    app.add_middleware(HttpLayer, max_body_bytes=4096, metrics=ApiMetrics(CollectorRegistry()))
    async with serve(app) as url:
        failures, _ = await asyncio.to_thread(fuzz, app.openapi(), url, {}, examples=40, negative=0)
    assert len(failures) == 1
    assert failures[0].startswith("POST /half (positive)")
    assert "500" in failures[0] or "Server error" in failures[0]
