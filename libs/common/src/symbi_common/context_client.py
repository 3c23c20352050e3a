"""A typed client of the context service (``symbi.context.*``), for the CLI, API and agents."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_common import natsio, subjects
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import context_pb2

Resp = TypeVar("Resp", bound=Message)
ENVELOPE_BYTES = 4096  # room for the request's other fields next to a document's content


class ContextClient:
    def __init__(self, nc: Client, *, timeout_s: float = 30.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def _call(self, operation: str, message: Message, response: type[Resp]) -> Resp:
        subject = subjects.context(operation)
        return await natsio.request(self.nc, subject, message, response, timeout=self.timeout_s)

    async def store(self, request: context_pb2.StoreContextRequest) -> str:
        return (await self._call("store", request, context_pb2.StoreContextResponse)).context_id

    async def bulk_store(self, request: context_pb2.BulkStoreContextRequest) -> context_pb2.BulkStoreContextResponse:
        return await self._call("bulk_store", request, context_pb2.BulkStoreContextResponse)

    async def retrieve(self, request: context_pb2.RetrieveContextRequest) -> context_pb2.ContextSearchResponse:
        return await self._call("retrieve", request, context_pb2.ContextSearchResponse)

    async def search(self, request: context_pb2.SearchKnowledgeRequest) -> context_pb2.ContextSearchResponse:
        return await self._call("search", request, context_pb2.ContextSearchResponse)

    async def delete(self, request: context_pb2.DeleteContextRequest) -> int:
        return (await self._call("delete", request, context_pb2.DeleteContextResponse)).deleted

    async def ingest(self, request: context_pb2.IngestDocumentRequest) -> context_pb2.IngestDocumentResponse:
        """Ingest a document; one that cannot fit in a NATS message is refused before it is sent."""
        room = self.nc.max_payload - ENVELOPE_BYTES
        if len(request.content) > room:
            raise InvalidArgumentError(
                f"{request.source}: {len(request.content)} bytes is more than one message can carry "
                f"({room} bytes with this NATS server's max_payload); split the document"
            )
        return await self._call("ingest", request, context_pb2.IngestDocumentResponse)

    async def ask(self, request: context_pb2.RagAskRequest) -> context_pb2.RagAnswer:
        return await self._call("ask", request, context_pb2.RagAnswer)
