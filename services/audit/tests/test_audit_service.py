"""The audit service creates the AUDIT stream, so events survive while it is down."""

from __future__ import annotations

import stat

import pytest
from nats.aio.client import Client
from symbi_testing.checks import components, health_of
from symbi_testing.fixtures import RunService

from symbi_audit.service import SPEC
from symbi_common import natsio, subjects
from symbi_common.health import SERVING
from symbi_common.settings import Settings
from symbi_proto.v1 import health_pb2

pytestmark = pytest.mark.integration


async def test_stream_and_storage_exist_after_start(run_service: RunService, nc: Client, settings: Settings) -> None:
    await run_service(SPEC)
    js = nc.jetstream()
    info = await js.stream_info(subjects.AUDIT_STREAM)
    assert info.config.subjects == [subjects.AUDIT_EVENTS]
    assert stat.S_IMODE(settings.audit_storage.stat().st_mode) == 0o700

    before = info.state.messages
    seq = await natsio.publish_durable(
        js, subjects.audit_event("agent_created"), health_pb2.HealthStatus(service="probe"), msg_id="evt-1"
    )
    assert seq > 0
    assert (await js.stream_info(subjects.AUDIT_STREAM)).state.messages == before + 1

    status = await health_of(nc, "audit")
    assert components(status)["jetstream"].status == SERVING
    assert "messages" in components(status)["jetstream"].detail
