"""The lifecycle service starts on real NATS and Redis and reports both in its health."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from symbi_testing.checks import check_redis_backed_service
from symbi_testing.fixtures import RunService

from symbi_common.settings import Settings
from symbi_lifecycle.service import SPEC

pytestmark = pytest.mark.integration


async def test_starts_and_needs_redis(run_service: RunService, nc: Client, settings: Settings) -> None:
    await check_redis_backed_service(SPEC, await run_service(SPEC), nc, settings)
