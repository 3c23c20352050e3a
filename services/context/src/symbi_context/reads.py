"""Reading memory: ``retrieve_context`` (the agent's own memory, and knowledge when asked)
and ``search_knowledge`` (shared knowledge the agent may read).

The query is embedded once; each memory kind is searched with the request's filter
(own kinds scoped to the agent), and the results merged by cosine similarity. Shared
items the policy will not let the agent read are withheld: the reply only counts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from symbi_context import filters
from symbi_context.access import Agent, ItemRef
from symbi_context.items import (
    OWN_KINDS,
    K,
    check_agent_id,
    check_limit,
    check_query,
    from_payload,
    kind_name,
)
from symbi_context.minilm import Matrix
from symbi_context.stores import Stores
from symbi_context.vectors import Hit
from symbi_proto.v1 import context_pb2

KNOWLEDGE_OVERFETCH = 2  # candidates fetched per result wanted, so withheld items leave room for readable ones


@dataclass(slots=True)
class Found:
    items: list[context_pb2.ContextItem]
    withheld: int = 0


async def retrieve(stores: Stores, req: context_pb2.RetrieveContextRequest) -> context_pb2.ContextSearchResponse:
    started = time.perf_counter()
    agent = await stores.directory.get(check_agent_id(req.agent_id))
    query, limit = check_query(req.query), check_limit(req.limit)
    filters.check_filter(req.filter)
    kinds = _kinds(list(req.kinds))
    vector = (await stores.embedder.embed([query]))[0]
    flt = req.filter if req.HasField("filter") else None
    found = await gather(stores, agent, vector, kinds, flt, limit, req.min_score)
    return _response(stores, found, started)


async def search_knowledge(
    stores: Stores, req: context_pb2.SearchKnowledgeRequest
) -> context_pb2.ContextSearchResponse:
    started = time.perf_counter()
    agent = await stores.directory.get(check_agent_id(req.agent_id))
    query, limit = check_query(req.query), check_limit(req.limit)
    filters.check_filter(req.filter)
    vector = (await stores.embedder.embed([query]))[0]
    flt = req.filter if req.HasField("filter") else None
    found = await gather(stores, agent, vector, [K.MEMORY_KIND_SHARED_KNOWLEDGE], flt, limit, req.min_score)
    return _response(stores, found, started)


def _kinds(kinds: list[int]) -> list[int]:
    for kind in kinds:
        kind_name(kind)
    return sorted(set(kinds)) if kinds else list(OWN_KINDS)


def _response(stores: Stores, found: Found, started: float) -> context_pb2.ContextSearchResponse:
    response = context_pb2.ContextSearchResponse(
        items=found.items, embedding_model=stores.embedder.model, withheld=found.withheld
    )
    response.elapsed.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
    return response


@dataclass(slots=True)
class Candidates:
    """Search results before the policy has screened the shared ones."""

    own: list[context_pb2.ContextItem] = field(default_factory=list)
    shared: list[Hit] = field(default_factory=list)


async def gather(
    stores: Stores,
    agent: Agent,
    vector: Matrix,
    kinds: list[int],
    flt: context_pb2.ContextFilter | None,
    limit: int,
    min_score: float = 0.0,
) -> Found:
    """The ``limit`` most similar items over ``kinds`` that the agent may read, best first."""
    return await screen(stores, agent, await search(stores, agent, vector, kinds, flt, limit, min_score), limit)


async def search(
    stores: Stores,
    agent: Agent,
    vector: Matrix,
    kinds: list[int],
    flt: context_pb2.ContextFilter | None,
    limit: int,
    min_score: float = 0.0,
) -> Candidates:
    """Nearest neighbours of ``vector`` in each kind (own kinds after the request's policy decision)."""
    found = Candidates()
    for kind in kinds:
        if kind == K.MEMORY_KIND_SHARED_KNOWLEDGE:
            await stores.guard.knowledge(agent, "read")
            found.shared = await stores.vectors.search(
                "shared_knowledge", vector, filters.to_qdrant(flt), limit * KNOWLEDGE_OVERFETCH, min_score
            )
            continue
        await stores.guard.own(agent, kind, "read")
        if kind == K.MEMORY_KIND_SHORT_TERM:
            for stored, score in await stores.short.search(agent.agent_id, vector, flt, limit, min_score):
                found.own.append(from_payload(stored.context_id, stored.payload, score))
        else:
            hits = await stores.vectors.search(
                kind_name(kind), vector, filters.to_qdrant(flt, agent_id=agent.agent_id), limit, min_score
            )
            found.own.extend(from_payload(h.id, h.payload, h.score) for h in hits)
    return found


async def screen(stores: Stores, agent: Agent, candidates: Candidates, limit: int) -> Found:
    """Own items as they are; shared ones only where the policy lets the agent read them (one batch)."""
    found = Found(list(candidates.own))
    hits = candidates.shared
    refs = [
        ItemRef(
            h.id,
            str(h.payload.get("agent_id", "")),
            str(h.payload.get("tenant", "")),
            list(h.payload.get("labels") or []),
            int(h.payload.get("sensitivity", 0)),
            str(h.payload.get("document_id", "")),
        )
        for h in hits
    ]
    readable = 0
    for hit, outcome in zip(hits, await stores.guard.items(agent, "read", refs), strict=True):
        content_bytes = len(str(hit.payload.get("content", "")).encode())
        if not outcome.allowed or (outcome.max_bytes and content_bytes > outcome.max_bytes):
            found.withheld += 1
        elif readable < limit:
            readable += 1
            found.items.append(from_payload(hit.id, hit.payload, hit.score))
    found.items.sort(key=lambda item: -item.score)
    del found.items[limit:]
    return found
