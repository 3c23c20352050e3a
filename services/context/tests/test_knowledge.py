"""Shared knowledge: every read and write decided by the real policy service, labels respected, audited."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from symbi_testing.streams import audit_events, details, wait_for_audit

from symbi_common.errors import ConfigError, InvalidArgumentError, PermissionDeniedError
from symbi_context import service
from symbi_context.items import to_payload
from symbi_context.minilm import MiniLM
from symbi_context.vectors import Point, VectorStore
from symbi_proto.v1 import audit_pb2
from symbi_proto.v1 import context_pb2 as C

from .conftest import ContextStack

pytestmark = pytest.mark.integration
SHARED = C.MEMORY_KIND_SHARED_KNOWLEDGE
PUBLISHER = ("shared_knowledge", "read_memory")


def knowledge(content: str, *labels: str) -> C.ContextItem:
    return C.ContextItem(kind=SHARED, content=content, labels=list(labels), source="handbook")


async def search(stack: ContextStack, agent: str, query: str, **kw: object) -> C.ContextSearchResponse:
    req = C.SearchKnowledgeRequest(agent_id=agent, query=query, **kw)  # type: ignore[arg-type]
    reply: C.ContextSearchResponse = await stack.call("search", req, C.ContextSearchResponse)
    return reply


async def publish(stack: ContextStack, agent: str, *items: C.ContextItem) -> list[str]:
    reply = await stack.call("bulk_store", C.BulkStoreContextRequest(agent_id=agent, items=items),
                             C.BulkStoreContextResponse)  # fmt: skip
    assert reply.failed == 0, [r.error.message for r in reply.results]
    return [r.context_id for r in reply.results]


async def test_sharing_is_decided_by_policy_per_item(context_stack: ContextStack, fresh_audit_streams: None) -> None:
    stack = context_stack
    writer = await stack.agent("writer", capabilities=PUBLISHER)
    reader = await stack.agent("reader")
    cleared = await stack.agent("cleared", capabilities=("read_memory", "read_pii"))
    public_id, pii_id = await publish(
        stack,
        writer,
        knowledge("Expense claims are approved by the team lead within five days."),
        knowledge("Employee Bob Smith's expense claim was rejected; his phone is 555-0100.", "pii"),
    )

    seen = await search(stack, reader, "how are expense claims approved?")
    assert [i.context_id for i in seen.items] == [public_id]
    assert seen.withheld == 1  # the pii item exists, but only its count is told
    assert seen.items[0].agent_id == writer
    assert seen.items[0].kind == SHARED

    everything = await search(stack, cleared, "how are expense claims approved?")
    assert {i.context_id for i in everything.items} == {public_id, pii_id}
    assert everything.withheld == 0

    # retrieve_context over shared knowledge goes through the same checks
    mixed = await stack.call("retrieve", C.RetrieveContextRequest(agent_id=reader, query="expense claim",
                                                                  kinds=[SHARED]), C.ContextSearchResponse)  # fmt: skip
    assert ([i.context_id for i in mixed.items], mixed.withheld) == ([public_id], 1)

    stored = await wait_for_audit(stack.nc, "context.knowledge_stored", lambda e: e.agent_id == writer)
    assert set(details(stored[0])["context_ids"]) == {public_id, pii_id}
    assert list(stored[0].data_labels) == ["pii"]
    decisions = await wait_for_audit(stack.nc, "policy.decision", lambda e: "pii" in e.data_labels, count=2)
    assert any(e.outcome == audit_pb2.AUDIT_OUTCOME_DENIED for e in decisions)


async def test_denied_requests_are_refused_with_the_reason(context_stack: ContextStack) -> None:
    stack = context_stack
    writer = await stack.agent("writer", capabilities=PUBLISHER)
    plain = await stack.agent("plain")
    quarantined = await stack.agent("outcast", tenant="quarantine", capabilities=PUBLISHER)
    await publish(stack, writer, knowledge("The canteen opens at noon."))

    with pytest.raises(PermissionDeniedError, match="tenant quarantine has no shared knowledge"):
        await search(stack, quarantined, "when does the canteen open?")
    with pytest.raises(PermissionDeniedError, match="write of shared knowledge"):
        await stack.call("store", C.StoreContextRequest(agent_id=plain, item=knowledge("The canteen closed.")),
                         C.StoreContextResponse)  # fmt: skip
    assert [i.content for i in (await search(stack, plain, "canteen opening time")).items] == [
        "The canteen opens at noon."
    ]


async def test_deletes_are_decided_and_audited(context_stack: ContextStack, fresh_audit_streams: None) -> None:
    stack = context_stack
    owner = await stack.agent("owner", capabilities=PUBLISHER)
    rival = await stack.agent("rival", capabilities=PUBLISHER)
    [mine] = await publish(stack, owner, knowledge("Backups run nightly at 02:00 UTC."))
    with pytest.raises(PermissionDeniedError, match="only its writer deletes"):
        await stack.call("delete", C.DeleteContextRequest(agent_id=rival, context_ids=[mine]), C.DeleteContextResponse)
    with pytest.raises(InvalidArgumentError, match="non-empty filter"):
        await stack.call("delete", C.DeleteContextRequest(agent_id=owner, kind=SHARED), C.DeleteContextResponse)
    assert [i.context_id for i in (await search(stack, rival, "when do backups run?")).items] == [mine]
    reply = await stack.call("delete", C.DeleteContextRequest(agent_id=owner, kind=SHARED,
                                                              filter=C.ContextFilter(source="handbook")),
                             C.DeleteContextResponse)  # fmt: skip
    assert reply.deleted == 1
    assert (await search(stack, rival, "when do backups run?")).items == []
    deleted = await wait_for_audit(stack.nc, "context.knowledge_deleted", lambda e: e.agent_id == owner)
    assert details(deleted[0])["context_ids"] == [mine]
    assert not [e for e in await audit_events(stack.nc, "context.knowledge_deleted") if e.agent_id == rival]


async def test_retention_deletes_old_knowledge(tmp_path: Path, qdrant_url: str) -> None:
    vectors = VectorStore.open(url=qdrant_url, path=tmp_path / "qdrant", api_key="", prefix=f"r{uuid.uuid4().hex[:8]}",
                               dimension=384, timeout_s=10)  # fmt: skip
    try:
        await vectors.ensure_collections(["shared_knowledge"])
        model = MiniLM()
        now = time.time()
        texts = {"old": "The 2019 travel policy allowed business class.", "new": "Travel is economy class."}
        ages = {"old": 400 * 86_400, "new": 86_400}
        points = [
            Point(str(uuid.uuid4()), model.encode([text])[0],
                  to_payload(knowledge(text), created=now - ages[name]) | {"name": name})
            for name, text in texts.items()
        ]  # fmt: skip
        await vectors.upsert("shared_knowledge", points)
        assert await service.expire_knowledge(vectors, 365, now=now) == 1
        left = await vectors.scroll("shared_knowledge", None, limit=10)
        assert [h.payload["name"] for h in left] == ["new"]
        assert await service.expire_knowledge(vectors, 365, now=now) == 0
    finally:
        if qdrant_url:
            await vectors.call(lambda: vectors.client.delete_collection(vectors.collection("shared_knowledge")), "drop")
        await vectors.close()


async def test_a_collection_of_another_dimension_is_refused(tmp_path: Path, qdrant_url: str) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    first = VectorStore.open(
        url=qdrant_url, path=tmp_path / "q", api_key="", prefix=prefix, dimension=384, timeout_s=10
    )
    try:
        await first.ensure_collections(["long_term"])
    finally:
        await first.close()
    second = VectorStore.open(url=qdrant_url, path=tmp_path / "q", api_key="", prefix=prefix, dimension=768,
                              timeout_s=10)  # fmt: skip
    try:
        with pytest.raises(ConfigError, match=f"collection {prefix}_long_term holds 384-dimension vectors"):
            await second.ensure_collections(["long_term"])
    finally:
        if qdrant_url:
            await second.call(lambda: second.client.delete_collection(f"{prefix}_long_term"), "drop")
        await second.close()
