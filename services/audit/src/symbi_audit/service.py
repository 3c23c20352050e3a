"""Audit service bootstrap: the AUDIT JetStream stream and the storage directory.

The stream exists from the moment the audit service has started once, so events
published by other services while the audit consumer is down are kept by NATS.
The signed, chained log and its consumer are added by the audit trail work.
"""

from __future__ import annotations

import logging

import nats.js.errors

from symbi_common import audit_events, subjects
from symbi_common.health import NOT_SERVING, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec

log = logging.getLogger(__name__)


async def setup(ctx: ServiceContext) -> None:
    await audit_events.ensure_stream(ctx.js)
    storage = ctx.settings.audit_storage
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx.health.endpoints["storage"] = str(storage)

    async def stream_check() -> CheckResult:
        try:
            info = await ctx.js.stream_info(subjects.AUDIT_STREAM)
        except nats.js.errors.NotFoundError:
            return NOT_SERVING, f"stream {subjects.AUDIT_STREAM} is missing"
        return SERVING, f"stream {subjects.AUDIT_STREAM}: {info.state.messages} messages"

    ctx.health.add_check("jetstream", stream_check)


SPEC = ServiceSpec(name="audit", summary="signed, hash-chained audit trail", setup=setup)
