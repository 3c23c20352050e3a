"""The context service starts on real NATS and Redis, with its model and Qdrant, and reports them in its health."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from symbi_testing.checks import check_redis_backed_service, components, health_of
from symbi_testing.fixtures import RunService

from symbi_common.health import SERVING
from symbi_common.settings import Settings
from symbi_context.service import SPEC

pytestmark = pytest.mark.integration


async def test_starts_and_needs_redis(run_service: RunService, nc: Client, settings: Settings) -> None:
    await check_redis_backed_service(SPEC, await run_service(SPEC), nc, settings)
    parts = components(await health_of(nc, "context"))
    assert parts["embeddings"].status == SERVING
    assert parts["embeddings"].detail == "all-MiniLM-L6-v2, 384 dimensions"
    assert parts["vector_db"].status == SERVING
    assert parts["vector_db"].detail.startswith(f"Qdrant local mode at {settings.runtime.state_dir / 'qdrant'}")
