"""Document ingestion: parse, chunk, and store the chunks as one document (all or nothing).

Every chunk becomes a ``ContextItem`` of the requested kind (long-term memory or
shared knowledge) with the document's id, its position (``chunk_index``), the
request's labels, sensitivity and metadata, and the chunk's own metadata
(``section``, ``page``, ``media_type``). If any chunk cannot be stored, the chunks
that were are deleted again and the request fails with the first error.
"""

from __future__ import annotations

import logging
import uuid

from google.protobuf.json_format import MessageToDict

from symbi_common.errors import InvalidArgumentError, from_detail
from symbi_context import writes
from symbi_context.ingest import chunk_document, media_type_for
from symbi_context.items import K, kind_name, metadata_struct
from symbi_context.stores import Stores
from symbi_proto.v1 import context_pb2

log = logging.getLogger(__name__)

INGEST_KINDS = (K.MEMORY_KIND_LONG_TERM, K.MEMORY_KIND_SHARED_KNOWLEDGE)


async def ingest(stores: Stores, req: context_pb2.IngestDocumentRequest) -> context_pb2.IngestDocumentResponse:
    if req.kind not in INGEST_KINDS:
        raise InvalidArgumentError(f"documents go into long-term memory or shared knowledge, not {req.kind}")
    if not req.source.strip():
        raise InvalidArgumentError("a document needs a source (its file name or URI)")
    media_type = media_type_for(req.source, req.media_type)
    chunks = chunk_document(req.content, media_type, chunk_size=req.chunking.chunk_size, overlap=req.chunking.overlap)
    document_id = str(uuid.uuid4())
    base = MessageToDict(req.metadata)
    items = [
        context_pb2.ContextItem(
            kind=req.kind,
            content=chunk.text,
            metadata=metadata_struct({**base, **chunk.metadata}),
            labels=list(req.labels),
            sensitivity=req.sensitivity,
            source=req.source,
            document_id=document_id,
            chunk_index=index,
        )
        for index, chunk in enumerate(chunks)
    ]
    bulk = await writes.store_bulk(stores, context_pb2.BulkStoreContextRequest(agent_id=req.agent_id, items=items))
    if bulk.failed:
        stored = [r.context_id for r in bulk.results if r.context_id]
        if stored:
            await writes.delete(
                stores, context_pb2.DeleteContextRequest(agent_id=req.agent_id, kind=req.kind, context_ids=stored)
            )
        first = next(r.error for r in bulk.results if r.HasField("error"))
        log.warning("ingesting %s failed: %s (%d of %d chunks)", req.source, first.message, bulk.failed, len(items))
        raise from_detail(first)
    log.info("ingested %s: %d chunks into %s (%s)", req.source, len(items), kind_name(req.kind), document_id)
    return context_pb2.IngestDocumentResponse(
        document_id=document_id, context_ids=[r.context_id for r in bulk.results], chunks=len(items)
    )
