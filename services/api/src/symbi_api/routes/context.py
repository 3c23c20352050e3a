"""/v1/agents/{agent_id}/context, /knowledge and /documents: an agent's memory and knowledge.

The API acts for the agent named in the path: the context service decides every read
and write at ``data_access`` with the agent as subject (its tenant and capabilities),
as if the agent had asked. Writes (store, ingest, delete) are admitted by the guard
first. Embedding and answering may take seconds: the call waits ``[api].call_timeout_s``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field, model_validator

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import ID_PATTERN, AgentId, Body, JsonObject, visible_agent
from symbi_api.runtime import Api, api, to_json
from symbi_common.audit_events import details_struct
from symbi_common.errors import InvalidArgumentError
from symbi_common.policy_client import SENSITIVITIES, Target
from symbi_proto.v1 import context_pb2

router = APIRouter(prefix="/v1/agents/{agent_id}", tags=["context"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("context:read"))]
Write = Annotated[ApiKey, Depends(require("context:write"))]
KindName = Literal["short_term", "long_term", "working", "shared_knowledge"]
Sensitivity = Literal["", "public", "internal", "confidential", "restricted"]
KINDS = {
    "short_term": context_pb2.MEMORY_KIND_SHORT_TERM,
    "long_term": context_pb2.MEMORY_KIND_LONG_TERM,
    "working": context_pb2.MEMORY_KIND_WORKING,
    "shared_knowledge": context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE,
}
MODES = {
    "auto": context_pb2.ANSWER_MODE_AUTO,
    "extractive": context_pb2.ANSWER_MODE_EXTRACTIVE,
    "generative": context_pb2.ANSWER_MODE_GENERATIVE,
}
Labels = Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=64)]


class StoreItem(Body):
    kind: KindName = "long_term"
    content: str = Field(min_length=1, description="the text to remember")
    metadata: JsonObject = Field(default_factory=dict)
    labels: Labels = Field(default_factory=list)
    sensitivity: Sensitivity = ""
    source: str = Field(default="", max_length=1024)
    task_id: str = Field(default="", max_length=128, description="working memory: the task it belongs to")
    ttl_s: float = Field(default=0, ge=0, le=30 * 86_400, description="short-term memory: time to live (0: default)")


class Search(Body):
    query: str = Field(min_length=1, max_length=8192)
    kinds: list[KindName] = Field(default_factory=list, description="memory kinds searched (default: all)")
    limit: int = Field(default=10, ge=1, le=100)
    min_score: float = Field(default=0.0, ge=-1, le=1)


class KnowledgeSearch(Body):
    query: str = Field(min_length=1, max_length=8192)
    limit: int = Field(default=10, ge=1, le=100)
    min_score: float = Field(default=0.0, ge=-1, le=1)


class Ask(Body):
    question: str = Field(min_length=1, max_length=8192)
    kinds: list[KindName] = Field(default_factory=list)
    top_k: int = Field(default=5, ge=1, le=50)
    mode: Literal["auto", "extractive", "generative"] = "auto"


class Document(Body):
    source: str = Field(min_length=1, max_length=1024, description="its name, cited in answers")
    media_type: str = Field(default="text/markdown", max_length=128, description="text/markdown, text/plain, ...")
    text: str | None = Field(default=None, description="the document as text")
    content_base64: str | None = Field(default=None, description="or its bytes, base64 (e.g. a PDF)")
    kind: KindName = "long_term"
    labels: Labels = Field(default_factory=list)
    sensitivity: Sensitivity = ""
    chunk_size: int = Field(default=0, ge=0, le=100_000, description="characters per chunk (0: default)")
    overlap: int = Field(default=0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _one_content(self) -> Document:
        if (self.text is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of text and content_base64")
        return self

    def content(self) -> bytes:
        if self.text is not None:
            return self.text.encode()
        try:
            return base64.b64decode(self.content_base64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgumentError("content_base64 is not valid base64") from None


@router.post("/context", status_code=201, summary="Store one item in the agent's memory")
async def store(
    agent_id: AgentId, body: StoreItem, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "context.store", Target("agent", agent_id))
    item = context_pb2.ContextItem(
        kind=KINDS[body.kind],
        content=body.content,
        labels=body.labels,
        source=body.source,
        task_id=body.task_id,
        sensitivity=SENSITIVITIES.get(body.sensitivity, 0),  # type: ignore[arg-type]
        metadata=details_struct(body.metadata),
    )
    message = context_pb2.StoreContextRequest(agent_id=agent_id, item=item)
    if body.ttl_s:
        message.ttl.FromNanoseconds(int(body.ttl_s * 1e9))
    return {"context_id": await a.context().store(message)}


@router.post("/context/search", summary="Search the agent's memory")
async def search(agent_id: AgentId, body: Search, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    message = context_pb2.RetrieveContextRequest(
        agent_id=agent_id,
        query=body.query,
        limit=body.limit,
        min_score=body.min_score,
        kinds=[KINDS[k] for k in body.kinds],
    )
    return to_json(await a.context().retrieve(message))


@router.post("/knowledge/search", summary="Search the shared knowledge the agent may read")
async def search_knowledge(
    agent_id: AgentId, body: KnowledgeSearch, caller: Read, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    message = context_pb2.SearchKnowledgeRequest(
        agent_id=agent_id, query=body.query, limit=body.limit, min_score=body.min_score
    )
    return to_json(await a.context().search(message))


@router.post("/context/ask", summary="Answer a question from the agent's memory and knowledge, with citations")
async def ask(agent_id: AgentId, body: Ask, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    message = context_pb2.RagAskRequest(
        agent_id=agent_id,
        question=body.question,
        top_k=body.top_k,
        mode=MODES[body.mode],
        kinds=[KINDS[k] for k in body.kinds],
    )
    return to_json(await a.context().ask(message))


@router.post("/documents", status_code=201, summary="Ingest a document (chunked, embedded, stored)")
async def ingest(
    agent_id: AgentId, body: Document, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    content = body.content()
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "context.ingest", Target("agent", agent_id))
    message = context_pb2.IngestDocumentRequest(
        agent_id=agent_id,
        kind=KINDS[body.kind],
        source=body.source,
        media_type=body.media_type,
        content=content,
        labels=body.labels,
        sensitivity=SENSITIVITIES.get(body.sensitivity, 0),  # type: ignore[arg-type]
        chunking=context_pb2.ChunkingOptions(chunk_size=body.chunk_size, overlap=body.overlap),
    )
    return to_json(await a.context().ingest(message))


@router.delete("/context/{context_id}", summary="Delete one item of the agent's memory")
async def delete(
    agent_id: AgentId,
    context_id: Annotated[str, Path(pattern=ID_PATTERN)],
    request: Request,
    caller: Write,
    a: Annotated[Api, Depends(api)],
    kind: Annotated[KindName, Query(description="the memory kind it is in")] = "long_term",
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "context.delete", Target("agent", agent_id, attributes={"kind": kind}))
    message = context_pb2.DeleteContextRequest(agent_id=agent_id, context_ids=[context_id], kind=KINDS[kind])
    return {"deleted": await a.context().delete(message)}
