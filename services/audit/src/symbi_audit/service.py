"""Audit service bootstrap: the streams, the writer (while it holds the lease), the query API.

Start-up: make sure the AUDIT and DEADLETTER streams exist (so events published
while no writer runs are kept by NATS), serve ``symbi.auditq.*``, then compete for
the writer lease in the background. A replica is ready once it answers queries; the
``writer`` health component says whether it is the writer or a standby, and which
replica is.
"""

from __future__ import annotations

import asyncio
import logging

import nats.js.errors

from symbi_audit.api import AuditApi
from symbi_audit.keys import KeyRing
from symbi_audit.lease import WriterLease
from symbi_audit.log import AuditLog, LogOptions
from symbi_audit.writer import AuditMetrics, AuditWriter, WriterOptions
from symbi_common import natsio, subjects
from symbi_common.errors import SymbiError
from symbi_common.health import DEGRADED, NOT_SERVING, SERVING, CheckResult
from symbi_common.service import ServiceContext, ServiceSpec
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.settings.audit
    storage = ctx.settings.audit_storage
    storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    ctx.health.endpoints["storage"] = str(storage)
    options = LogOptions(
        durable=cfg.fsync == "batch",
        segment_bytes=cfg.segment_mb * 1024 * 1024,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_interval_s=cfg.checkpoint_interval_s,
        signing_threads=cfg.signing_threads,
        signing_key_file=cfg.signing_key_file,
    )
    if cfg.signing_key_file is not None:  # a wrong or unreadable key stops start-up, naming the file
        KeyRing.check_initial(storage / "keys", cfg.signing_key_file)
    metrics = AuditMetrics(ctx.metrics)
    api = AuditApi(storage, ctx.instance_id)
    api.on_verified = lambda result, whole: metrics.verified(result, whole_log=whole)
    ctx.stack.callback(api.close)
    lease = WriterLease(ctx.js, ctx.instance_id, storage, ttl_s=cfg.lease_ttl_s)
    writer = AuditWriter(
        ctx.nc,
        ctx.js,
        lambda: AuditLog.open(storage, options, source=ctx.instance_id),
        lease,
        metrics,
        instance_id=ctx.instance_id,
        options=WriterOptions(batch_size=cfg.batch_size),
    )
    writer.on_error = ctx.health.record_error
    writer.on_log_change = api.use_writer
    await writer.setup_streams()
    await api.register(ctx)
    ctx.tasks.spawn(lease.keep_renewed(), name="audit-lease")
    running = ctx.tasks.spawn(writer.run(), name="audit-writer")
    ctx.stack.push_async_callback(writer.stop, running)  # before anything else closes: final checkpoint, lease
    if cfg.verify_interval_s:
        ctx.tasks.spawn(_verify_periodically(api, writer, cfg.verify_interval_s), name="audit-verify")

    async def stream_check() -> CheckResult:
        try:
            info = await ctx.js.stream_info(subjects.AUDIT_STREAM)
        except nats.js.errors.NotFoundError:
            return NOT_SERVING, f"stream {subjects.AUDIT_STREAM} is missing"
        return SERVING, f"stream {subjects.AUDIT_STREAM}: {info.state.messages} messages"

    async def writer_check() -> CheckResult:
        if writer.log is not None:
            return SERVING, f"writer; log of {writer.log.size} events, {len(writer.log.checkpoints)} checkpoints"
        holder = await lease.holder()
        return SERVING, f"standby; the writer is {holder or 'nobody yet'}"

    def integrity_check() -> CheckResult:
        last = api.last_verification
        if last is None:
            return SERVING, "not verified since start"
        if last.ok:
            return SERVING, f"verified {last.events_checked} events"
        return DEGRADED, f"verification failed: {last.failure.detail}"

    ctx.health.add_check("jetstream", stream_check)
    ctx.health.add_check("writer", writer_check)
    ctx.health.add_check("integrity", integrity_check)


async def _verify_periodically(api: AuditApi, writer: AuditWriter, interval_s: float) -> None:
    """The writer re-reads and verifies its whole log every interval (tampering at rest shows up in
    the ``integrity`` health component and ``symbi_audit_chain_verified``); standbys leave it to the writer."""
    while True:
        await asyncio.sleep(interval_s)
        if writer.log is None:
            continue
        try:
            result = await api.verify(audit_pb2.VerifyRequest(), natsio.RequestMeta(subjects.AUDIT_VERIFY, {}))
        except SymbiError as exc:  # the log changed hands or is not there yet: next round
            log.info("periodic audit verification skipped: %s", exc)
            continue
        if not result.ok:
            log.error("audit log verification FAILED: %s at event %d", result.failure.detail, result.failure.sequence)


SPEC = ServiceSpec(name="audit", summary="signed, hash-chained audit trail", setup=setup)
