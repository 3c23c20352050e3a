"""Writing memory: store, bulk store and delete, for every memory kind.

A store runs: look up the agent → validate each item → decide (policy) → embed
the contents in one batch → audit (shared knowledge, before the write) → write
(Redis for short-term, Qdrant for the rest) → acknowledge. A bulk store reports
each item's outcome in order; one bad item does not stop the others. Nothing is
acknowledged that the store has not confirmed.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from symbi_common.errors import InvalidArgumentError, PermissionDeniedError, SymbiError, from_detail
from symbi_context import filters
from symbi_context.access import Agent, ItemRef
from symbi_context.items import (
    VECTOR_KINDS,
    K,
    Owner,
    check_agent_id,
    check_context_id,
    kind_name,
    to_payload,
    validate_item,
)
from symbi_context.minilm import Matrix
from symbi_context.stores import KNOWLEDGE_DELETED, KNOWLEDGE_STORED, Stores
from symbi_context.vectors import Hit, Point
from symbi_proto.v1 import audit_pb2, context_pb2

log = logging.getLogger(__name__)

MAX_BULK = 1000


@dataclass(slots=True)
class _Pending:
    index: int
    item: context_pb2.ContextItem
    update: bool = False
    """The caller named the id: the item may exist already."""
    created: float = 0.0


@dataclass(slots=True)
class _Batch:
    results: list[context_pb2.BulkItemResult]
    pending: list[_Pending] = field(default_factory=list)

    def fail(self, index: int, err: SymbiError) -> None:
        self.results[index].error.CopyFrom(err.to_detail())


async def store_one(stores: Stores, req: context_pb2.StoreContextRequest) -> context_pb2.StoreContextResponse:
    ttl = req.ttl.ToNanoseconds() / 1e9 if req.HasField("ttl") else 0.0
    batch = await _store(stores, req.agent_id, [req.item], ttl)
    result = batch.results[0]
    if result.HasField("error"):
        raise from_detail(result.error)
    return context_pb2.StoreContextResponse(context_id=result.context_id)


async def store_bulk(stores: Stores, req: context_pb2.BulkStoreContextRequest) -> context_pb2.BulkStoreContextResponse:
    if not req.items:
        raise InvalidArgumentError("bulk store without items")
    if len(req.items) > MAX_BULK:
        raise InvalidArgumentError(f"{len(req.items)} items in one bulk store; at most {MAX_BULK}")
    ttl = req.ttl.ToNanoseconds() / 1e9 if req.HasField("ttl") else 0.0
    batch = await _store(stores, req.agent_id, list(req.items), ttl)
    failed = sum(1 for r in batch.results if r.HasField("error"))
    return context_pb2.BulkStoreContextResponse(
        results=batch.results, stored=len(batch.results) - failed, failed=failed
    )


async def _store(stores: Stores, agent_id: str, items: list[context_pb2.ContextItem], ttl_s: float) -> _Batch:
    if ttl_s < 0:
        raise InvalidArgumentError("ttl is negative")
    agent = await stores.directory.get(check_agent_id(agent_id))
    owner = Owner(agent.agent_id, agent.tenant)
    batch = _Batch([context_pb2.BulkItemResult() for _ in items])
    for index, raw in enumerate(items):
        try:
            batch.pending.append(_Pending(index, validate_item(raw, owner), update=bool(raw.context_id)))
        except SymbiError as exc:
            batch.fail(index, exc)
    await _existing(stores, agent, batch)
    await _decide(stores, agent, batch)
    if not batch.pending:
        return batch
    try:
        vectors = await stores.embedder.embed([p.item.content for p in batch.pending])
    except SymbiError as exc:
        for p in batch.pending:
            batch.fail(p.index, exc)
        return batch
    by_kind: dict[int, list[tuple[_Pending, int]]] = defaultdict(list)
    for row, p in enumerate(batch.pending):
        by_kind[p.item.kind].append((p, row))
    for kind, group in by_kind.items():
        try:
            await _write(stores, agent, kind, group, vectors, ttl_s)
        except SymbiError as exc:
            log.warning("storing %d %s items of %s failed: %s", len(group), kind_name(kind), agent.agent_id, exc)
            for p, _ in group:
                batch.fail(p.index, exc)
            continue
        for p, _ in group:
            batch.results[p.index].context_id = p.item.context_id
    return batch


async def _existing(stores: Stores, agent: Agent, batch: _Batch) -> None:
    """Updates keep their creation time; an own-memory id of another agent is refused."""
    keep: list[_Pending] = []
    for p in batch.pending:
        if not p.update:  # a fresh id: nothing to look up
            keep.append(p)
            continue
        try:
            if p.item.kind == K.MEMORY_KIND_SHORT_TERM:
                old = await stores.short.get(p.item.context_id)
                payload = old.payload if old else None
            else:
                hits = await stores.vectors.retrieve(kind_name(p.item.kind), [p.item.context_id])
                payload = hits[0].payload if hits else None
            if payload is not None:
                if p.item.kind != K.MEMORY_KIND_SHARED_KNOWLEDGE and payload.get("agent_id") != agent.agent_id:
                    raise PermissionDeniedError(f"context {p.item.context_id} belongs to another agent")
                p.created = float(payload.get("created_at") or 0.0)
                p.item.agent_id = str(payload.get("agent_id", agent.agent_id))  # shared: the writer stays the owner
            keep.append(p)
        except SymbiError as exc:
            batch.fail(p.index, exc)
    batch.pending = keep


async def _decide(stores: Stores, agent: Agent, batch: _Batch) -> None:
    keep: list[_Pending] = []
    own: dict[int, list[_Pending]] = defaultdict(list)
    shared: list[_Pending] = []
    for p in batch.pending:
        (shared if p.item.kind == K.MEMORY_KIND_SHARED_KNOWLEDGE else own[p.item.kind]).append(p)
    for kind, group in own.items():
        try:
            outcome = await stores.guard.own(agent, kind, "write", [lbl for p in group for lbl in p.item.labels])
        except SymbiError as exc:
            for p in group:
                batch.fail(p.index, exc)
            continue
        keep.extend(_capped(batch, group, outcome.max_bytes))
    if shared:
        try:
            await stores.guard.knowledge(agent, "write")
            refs = [ItemRef(p.item.context_id, p.item.agent_id, p.item.tenant, list(p.item.labels),
                            p.item.sensitivity, p.item.document_id) for p in shared]  # fmt: skip
            for p, outcome in zip(shared, await stores.guard.items(agent, "write", refs), strict=True):
                if outcome.allowed:
                    keep.extend(_capped(batch, [p], outcome.max_bytes))
                else:
                    batch.fail(p.index, PermissionDeniedError(f"write of shared knowledge: {outcome.reason}"))
        except SymbiError as exc:
            for p in shared:
                batch.fail(p.index, exc)
    batch.pending = sorted(keep, key=lambda p: p.index)


def _capped(batch: _Batch, group: list[_Pending], max_bytes: int) -> list[_Pending]:
    allowed = []
    for p in group:
        if max_bytes and len(p.item.content.encode()) > max_bytes:
            batch.fail(p.index, PermissionDeniedError(f"content is over the {max_bytes} bytes policy allows"))
        else:
            allowed.append(p)
    return allowed


async def _write(
    stores: Stores, agent: Agent, kind: int, group: list[tuple[_Pending, int]], matrix: Matrix, ttl_s: float
) -> None:
    if kind == K.MEMORY_KIND_SHORT_TERM:
        ttl = ttl_s or stores.limits.short_term_ttl_s
        for p, row in group:
            payload = to_payload(p.item, created=p.created, expires=time.time() + ttl)
            await stores.short.put(p.item.context_id, payload, matrix[row], ttl)
        return
    points = [Point(p.item.context_id, matrix[row], to_payload(p.item, created=p.created)) for p, row in group]
    if kind == K.MEMORY_KIND_WORKING:
        for task_id in sorted({p.item.task_id for p, _ in group}):
            await stores.remember_task(task_id, agent.agent_id)
    if kind == K.MEMORY_KIND_SHARED_KNOWLEDGE:
        ids = [p.item.context_id for p, _ in group]
        labels = {lbl for p, _ in group for lbl in p.item.labels}
        documents = sorted({p.item.document_id for p, _ in group if p.item.document_id})
        await stores.audit_knowledge(KNOWLEDGE_STORED, agent.agent_id, agent.tenant, ids, labels,
                                     {"documents": documents})  # fmt: skip
        try:
            await stores.vectors.upsert(kind_name(kind), points)
        except SymbiError as exc:
            await _audit_failure(stores, KNOWLEDGE_STORED, agent, ids, labels, exc)
            raise
        return
    await stores.vectors.upsert(kind_name(kind), points)


async def _audit_failure(
    stores: Stores, event: str, agent: Agent, ids: list[str], labels: set[str], exc: SymbiError
) -> None:
    try:
        await stores.audit_knowledge(event, agent.agent_id, agent.tenant, ids, labels, {"error": exc.message},
                                     outcome=audit_pb2.AUDIT_OUTCOME_FAILURE)  # fmt: skip
    except SymbiError as audit_exc:  # the first event stands; the failure is in the logs and the reply
        log.error("cannot audit the failed change of %d knowledge items: %s", len(ids), audit_exc)


async def delete(stores: Stores, req: context_pb2.DeleteContextRequest) -> context_pb2.DeleteContextResponse:
    agent = await stores.directory.get(check_agent_id(req.agent_id))
    filters.check_filter(req.filter)
    if req.context_ids:
        ids = [check_context_id(i) for i in req.context_ids]
        kinds = [req.kind] if req.kind else [K.MEMORY_KIND_SHORT_TERM, *VECTOR_KINDS]
        total = 0
        for kind in kinds:
            total += await _delete_ids(stores, agent, kind, ids)
        return context_pb2.DeleteContextResponse(deleted=total)
    if not req.kind:
        raise InvalidArgumentError("delete needs context_ids, or a kind (and optionally a filter)")
    kind_name(req.kind)
    flt = req.filter if req.HasField("filter") else None
    if req.kind == K.MEMORY_KIND_SHARED_KNOWLEDGE:
        if flt is None or not filters.to_qdrant(flt):
            raise InvalidArgumentError("deleting shared knowledge by filter needs a non-empty filter")
        hits = await stores.vectors.scroll("shared_knowledge", filters.to_qdrant(flt), limit=MAX_BULK)
        return context_pb2.DeleteContextResponse(deleted=await _delete_shared(stores, agent, hits))
    await stores.guard.own(agent, req.kind, "delete")
    if req.kind == K.MEMORY_KIND_SHORT_TERM:
        return context_pb2.DeleteContextResponse(deleted=await stores.short.delete_matching(agent.agent_id, flt))
    scoped = filters.to_qdrant(flt, agent_id=agent.agent_id)
    assert scoped is not None  # the agent scope is always there
    return context_pb2.DeleteContextResponse(deleted=await stores.vectors.delete_matching(kind_name(req.kind), scoped))


async def _delete_ids(stores: Stores, agent: Agent, kind: int, ids: list[str]) -> int:
    if kind == K.MEMORY_KIND_SHORT_TERM:
        mine = [
            i for i in ids if (s := await stores.short.get(i)) is not None and s.payload["agent_id"] == agent.agent_id
        ]
        if not mine:
            return 0
        await stores.guard.own(agent, kind, "delete")
        return await stores.short.delete(agent.agent_id, mine)
    hits = await stores.vectors.retrieve(kind_name(kind), ids)
    if kind == K.MEMORY_KIND_SHARED_KNOWLEDGE:
        return await _delete_shared(stores, agent, hits)
    mine_ids = [h.id for h in hits if h.payload.get("agent_id") == agent.agent_id]  # others' items: not found
    if not mine_ids:
        return 0
    await stores.guard.own(agent, kind, "delete")
    await stores.vectors.delete_ids(kind_name(kind), mine_ids)
    return len(mine_ids)


async def _delete_shared(stores: Stores, agent: Agent, hits: list[Hit]) -> int:
    if not hits:
        return 0
    await stores.guard.knowledge(agent, "delete")
    refs = [ItemRef(h.id, str(h.payload.get("agent_id", "")), str(h.payload.get("tenant", "")),
                    list(h.payload.get("labels") or []), int(h.payload.get("sensitivity", 0)),
                    str(h.payload.get("document_id", ""))) for h in hits]  # fmt: skip
    verdicts = await stores.guard.items(agent, "delete", refs)
    denied = [(ref.context_id, v.reason) for ref, v in zip(refs, verdicts, strict=True) if not v.allowed]
    if denied:
        first_id, reason = denied[0]
        raise PermissionDeniedError(f"delete of shared knowledge {first_id} (and {len(denied) - 1} more): {reason}")
    ids = [h.id for h in hits]
    labels = {lbl for ref in refs for lbl in ref.labels}
    await stores.audit_knowledge(KNOWLEDGE_DELETED, agent.agent_id, agent.tenant, ids, labels, {})
    try:
        await stores.vectors.delete_ids("shared_knowledge", ids)
    except SymbiError as exc:
        await _audit_failure(stores, KNOWLEDGE_DELETED, agent, ids, labels, exc)
        raise
    return len(ids)
