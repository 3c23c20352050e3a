"""The service's requests on ``symbi.context.<operation>`` (queue group ``context``).

| operation | request | response |
|---|---|---|
| ``store`` | ``StoreContextRequest`` | ``StoreContextResponse`` |
| ``bulk_store`` | ``BulkStoreContextRequest`` | ``BulkStoreContextResponse`` |
| ``retrieve`` | ``RetrieveContextRequest`` | ``ContextSearchResponse`` |
| ``search`` | ``SearchKnowledgeRequest`` | ``ContextSearchResponse`` |
| ``delete`` | ``DeleteContextRequest`` | ``DeleteContextResponse`` |
| ``ingest`` | ``IngestDocumentRequest`` | ``IngestDocumentResponse`` |
| ``ask`` | ``RagAskRequest`` | ``RagAnswer`` |
"""

from __future__ import annotations

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Histogram

from symbi_common import natsio, subjects
from symbi_common.service import ServiceContext
from symbi_context import documents, rag, reads, writes
from symbi_context.items import kind_name
from symbi_context.stores import Stores
from symbi_proto.v1 import context_pb2

QUEUE = "context"
OPERATIONS = ("store", "bulk_store", "retrieve", "search", "delete", "ingest", "ask")


class ContextMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter("symbi_context_items_stored", "Items stored, by memory kind", ["kind"], registry=registry)
        self.withheld = Counter("symbi_context_items_withheld", "Shared items withheld by policy", registry=registry)
        self.returned = Histogram(
            "symbi_context_items_returned",
            "Items returned per retrieval",
            registry=registry,
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200),
        )


class ContextApi:
    def __init__(self, stores: Stores, llm: rag.Generator | None, metrics: ContextMetrics) -> None:
        self.stores = stores
        self.llm = llm
        self.metrics = metrics

    async def register(self, ctx: ServiceContext) -> None:
        routes = [
            ("store", context_pb2.StoreContextRequest, self.store),
            ("bulk_store", context_pb2.BulkStoreContextRequest, self.bulk_store),
            ("retrieve", context_pb2.RetrieveContextRequest, self.retrieve),
            ("search", context_pb2.SearchKnowledgeRequest, self.search),
            ("delete", context_pb2.DeleteContextRequest, self.delete),
            ("ingest", context_pb2.IngestDocumentRequest, self.ingest),
            ("ask", context_pb2.RagAskRequest, self.ask),
        ]
        for operation, request_type, handler in routes:
            await ctx.serve(subjects.context(operation), request_type, handler, queue=QUEUE, concurrent=True)  # type: ignore[arg-type]

    async def store(self, req: context_pb2.StoreContextRequest, _: natsio.RequestMeta) -> Message:
        reply = await writes.store_one(self.stores, req)
        self.metrics.stored.labels(kind_name(req.item.kind)).inc()
        return reply

    async def bulk_store(self, req: context_pb2.BulkStoreContextRequest, _: natsio.RequestMeta) -> Message:
        reply = await writes.store_bulk(self.stores, req)
        for item, result in zip(req.items, reply.results, strict=True):
            if not result.HasField("error"):
                self.metrics.stored.labels(kind_name(item.kind)).inc()
        return reply

    async def retrieve(self, req: context_pb2.RetrieveContextRequest, _: natsio.RequestMeta) -> Message:
        return self._observe(await reads.retrieve(self.stores, req))

    async def search(self, req: context_pb2.SearchKnowledgeRequest, _: natsio.RequestMeta) -> Message:
        return self._observe(await reads.search_knowledge(self.stores, req))

    def _observe(self, reply: context_pb2.ContextSearchResponse) -> context_pb2.ContextSearchResponse:
        self.metrics.returned.observe(len(reply.items))
        self.metrics.withheld.inc(reply.withheld)
        return reply

    async def delete(self, req: context_pb2.DeleteContextRequest, _: natsio.RequestMeta) -> Message:
        return await writes.delete(self.stores, req)

    async def ingest(self, req: context_pb2.IngestDocumentRequest, _: natsio.RequestMeta) -> Message:
        reply = await documents.ingest(self.stores, req)
        self.metrics.stored.labels(kind_name(req.kind)).inc(reply.chunks)
        return reply

    async def ask(self, req: context_pb2.RagAskRequest, _: natsio.RequestMeta) -> Message:
        return await rag.ask(self.stores, self.llm, req)
