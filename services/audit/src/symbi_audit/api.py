"""The audit service's requests on ``symbi.auditq.*``: query, verify, checkpoints, proofs, keys.

Every replica answers (queue group ``audit``) from the storage directory: the
writer from its own log, a standby from a read-only view it refreshes before each
request. ``symbi.auditq.rotate`` is answered only by the writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from symbi_audit import canonical, storage
from symbi_audit.log import AuditLog
from symbi_audit.reports import build_report
from symbi_audit.verify import verify_directory
from symbi_common import natsio, subjects
from symbi_common.errors import InvalidArgumentError, NotFoundError, UnavailableError
from symbi_common.service import ServiceContext
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

QUEUE = "audit"
MAX_CHECKPOINTS_PAGE = 1000


class AuditApi:
    def __init__(self, storage_dir: Path, source: str) -> None:
        self.storage_dir = storage_dir
        self.source = source
        self.writer_log: AuditLog | None = None
        self._reader: AuditLog | None = None
        self.last_verification: audit_pb2.VerifyResponse | None = None
        self.on_verified: Callable[[audit_pb2.VerifyResponse, bool], None] = lambda _result, _whole: None
        """Told of every verification and whether it covered the whole log (the service feeds its metrics)."""

    def use_writer(self, audit_log: AuditLog | None) -> None:
        self.writer_log = audit_log

    def view(self) -> AuditLog:
        """The freshest log this replica can read."""
        if self.writer_log is not None:
            return self.writer_log
        if self._reader is None:
            try:
                self._reader = AuditLog.open_readonly(self.storage_dir, source=self.source)
            except NotFoundError:
                raise UnavailableError("the audit log has not been created yet (no writer has run)") from None
        self._reader.refresh()
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def register(self, ctx: ServiceContext) -> None:
        routes = [
            (subjects.AUDIT_QUERY, audit_pb2.AuditQueryRequest, self.query),
            (subjects.AUDIT_VERIFY, audit_pb2.VerifyRequest, self.verify),
            (subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest, self.checkpoint),
            (subjects.AUDIT_CHECKPOINTS, audit_pb2.ListCheckpointsRequest, self.checkpoints),
            (subjects.AUDIT_INCLUSION, audit_pb2.InclusionProofRequest, self.inclusion),
            (subjects.AUDIT_CONSISTENCY, audit_pb2.ConsistencyProofRequest, self.consistency),
            (subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest, self.keys),
            (subjects.AUDIT_REPORT, audit_pb2.ComplianceReportRequest, self.report),
        ]
        for subject, request_type, handler in routes:
            await ctx.serve(subject, request_type, handler, queue=QUEUE)  # type: ignore[arg-type]

    async def query(self, request: audit_pb2.AuditQueryRequest, _: natsio.RequestMeta) -> audit_pb2.AuditQueryResponse:
        view = self.view()
        locations, token, total = view.index.query(request)
        events = await asyncio.to_thread(view.read, locations)
        response = audit_pb2.AuditQueryResponse(events=events)
        response.page.next_page_token = token
        response.page.total_size = total
        return response

    async def verify(self, request: audit_pb2.VerifyRequest, _: natsio.RequestMeta) -> audit_pb2.VerifyResponse:
        view = self.view()
        size = view.size
        to = min(request.to_sequence, size) if request.HasField("to_sequence") else size
        if request.from_sequence > to:
            raise InvalidArgumentError(f"from_sequence {request.from_sequence} is past the end {to}")
        first = view.keys.keys[0]
        leaves = storage.read_leaves(self.storage_dir / "leaves.bin")[: request.from_sequence * 32]
        result = await asyncio.to_thread(
            verify_directory,
            self.storage_dir,
            {first.key_id: first.public},
            to_sequence=to,
            check_event_signatures=request.verify_event_signatures,
            from_sequence=request.from_sequence,
            known_leaves=leaves,
        )
        self.last_verification = result
        self.on_verified(result, request.from_sequence == 0 and to == size)
        return result

    async def checkpoint(self, request: audit_pb2.GetCheckpointRequest, _: natsio.RequestMeta) -> audit_pb2.Checkpoint:
        return self.view().checkpoint_for(request.tree_size)

    async def checkpoints(
        self, request: audit_pb2.ListCheckpointsRequest, _: natsio.RequestMeta
    ) -> audit_pb2.ListCheckpointsResponse:
        every = self.view().checkpoints
        start = int(request.page.page_token or 0)
        size = min(request.page.page_size or 100, MAX_CHECKPOINTS_PAGE)
        page = every[start : start + size]
        response = audit_pb2.ListCheckpointsResponse(checkpoints=page)
        response.page.total_size = len(every)
        if start + size < len(every):
            response.page.next_page_token = str(start + size)
        return response

    async def inclusion(
        self, request: audit_pb2.InclusionProofRequest, _: natsio.RequestMeta
    ) -> audit_pb2.InclusionProofResponse:
        view = self.view()
        checkpoint = view.checkpoint_for(request.tree_size)
        if request.WhichOneof("target") == "event_id":
            event = view.event_by_id(request.event_id)
        else:
            event = view.event(request.sequence)
        if event.sequence >= checkpoint.tree_size:
            raise NotFoundError(
                f"event {event.sequence} is not covered by checkpoint {checkpoint.tree_size} yet; ask again shortly"
            )
        proof = audit_pb2.InclusionProof(
            leaf_index=event.sequence,
            tree_size=checkpoint.tree_size,
            leaf_hash=canonical.leaf_hash(event),
            path=view.tree.inclusion_proof(event.sequence, checkpoint.tree_size),
        )
        return audit_pb2.InclusionProofResponse(event=event, proof=proof, checkpoint=checkpoint)

    async def consistency(
        self, request: audit_pb2.ConsistencyProofRequest, _: natsio.RequestMeta
    ) -> audit_pb2.ConsistencyProofResponse:
        view = self.view()
        first = view.checkpoint_for(request.first_tree_size) if request.first_tree_size else None
        if first is None:
            raise InvalidArgumentError("first_tree_size is required")
        second = view.checkpoint_for(request.second_tree_size)
        if first.tree_size > second.tree_size:
            raise InvalidArgumentError("the first checkpoint must not be larger than the second")
        proof = audit_pb2.ConsistencyProof(
            first_tree_size=first.tree_size,
            second_tree_size=second.tree_size,
            path=view.tree.consistency_proof(first.tree_size, second.tree_size),
        )
        return audit_pb2.ConsistencyProofResponse(proof=proof, first=first, second=second)

    async def keys(
        self, _request: audit_pb2.ListSigningKeysRequest, _: natsio.RequestMeta
    ) -> audit_pb2.ListSigningKeysResponse:
        return audit_pb2.ListSigningKeysResponse(keys=self.view().signing_keys())

    async def report(
        self, request: audit_pb2.ComplianceReportRequest, meta: natsio.RequestMeta
    ) -> audit_pb2.ComplianceReportResponse:
        view = self.view()
        integrity = await self.verify(audit_pb2.VerifyRequest(), meta)
        return await asyncio.to_thread(build_report, view, request, integrity)
