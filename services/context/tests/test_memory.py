"""Own memory over NATS on real Redis and Qdrant: every kind, TTL, filters, bulk, updates, deletes."""

from __future__ import annotations

import time
import uuid

import pytest
from symbi_testing.checks import eventually

from symbi_common.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from symbi_context.items import metadata_struct
from symbi_proto.v1 import context_pb2 as C

from .conftest import ContextStack

pytestmark = pytest.mark.integration

FACTS = [
    "The deployment runbook says to drain the node before upgrading the kernel.",
    "Alice prefers her reports as PDF files sent on Monday mornings.",
    "The staging database password rotates every 30 days.",
    "Bananas are rich in potassium.",
]


def item(kind: int, content: str, **kw: object) -> C.ContextItem:
    return C.ContextItem(kind=kind, content=content, **kw)  # type: ignore[arg-type]


async def store(stack: ContextStack, agent: str, it: C.ContextItem, ttl_s: float = 0) -> str:
    req = C.StoreContextRequest(agent_id=agent, item=it)
    if ttl_s:
        req.ttl.FromNanoseconds(int(ttl_s * 1e9))
    reply = await stack.call("store", req, C.StoreContextResponse)
    return str(reply.context_id)


async def retrieve(stack: ContextStack, agent: str, query: str, *kinds: int, **kw: object) -> C.ContextSearchResponse:
    req = C.RetrieveContextRequest(agent_id=agent, query=query, kinds=list(kinds), **kw)  # type: ignore[arg-type]
    reply: C.ContextSearchResponse = await stack.call("retrieve", req, C.ContextSearchResponse)
    return reply


async def test_each_own_kind_is_stored_and_retrieved_by_meaning(context_stack: ContextStack) -> None:
    me, other = await context_stack.agent("memo"), await context_stack.agent("other")
    for kind in (C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM):
        for fact in FACTS:
            await store(context_stack, me, item(kind, fact))
    await store(context_stack, me, item(C.MEMORY_KIND_WORKING, "Step 2 of the task: draft the kernel upgrade plan",
                                        task_id="task-1"))  # fmt: skip
    await store(context_stack, other, item(C.MEMORY_KIND_LONG_TERM, "Other agent: upgrade the kernel on Fridays"))

    for kind in (C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM):
        found = await retrieve(context_stack, me, "how do I upgrade the kernel safely?", kind, limit=2)
        assert found.embedding_model == "all-MiniLM-L6-v2"
        assert found.items[0].content == FACTS[0]
        assert all(i.kind == kind and i.agent_id == me for i in found.items)
        assert found.items[0].score > found.items[1].score > 0
        assert found.items[0].HasField("created_at")

    default = await retrieve(context_stack, me, "kernel upgrade", limit=20)  # short-term, long-term and working
    kinds = {i.kind for i in default.items}
    assert kinds == {C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM, C.MEMORY_KIND_WORKING}
    assert all(i.agent_id == me for i in default.items)  # never another agent's memory
    assert [i.score for i in default.items] == sorted((i.score for i in default.items), reverse=True)
    assert default.items[0].content.startswith(("The deployment runbook", "Step 2"))


async def test_short_term_memory_expires(context_stack: ContextStack) -> None:
    me = await context_stack.agent("forgetful")
    keep = await store(context_stack, me, item(C.MEMORY_KIND_SHORT_TERM, "The user asked about invoices"), ttl_s=600)
    brief = await store(context_stack, me, item(C.MEMORY_KIND_SHORT_TERM, "The user mentioned invoice 42"), ttl_s=1)
    found = await retrieve(context_stack, me, "invoices", C.MEMORY_KIND_SHORT_TERM)
    assert {i.context_id for i in found.items} == {keep, brief}
    by_id = {i.context_id: i for i in found.items}
    assert by_id[brief].expires_at.ToNanoseconds() / 1e9 == pytest.approx(time.time() + 1, abs=2)

    async def expired() -> bool:
        ids = {i.context_id for i in (await retrieve(context_stack, me, "invoices", C.MEMORY_KIND_SHORT_TERM)).items}
        return ids == {keep}

    waited = await eventually(expired, timeout_s=10, what="the 1 s item expires")
    assert waited >= 0.3  # it was there a moment ago: expiry, not absence


async def test_filters(context_stack: ContextStack) -> None:
    me = await context_stack.agent("filtering")
    before = time.time()
    stored = {}
    for n, (project, labels, source) in enumerate(
        [("apollo", ["internal"], "notes.md"), ("apollo", ["pii"], "crm"), ("gemini", ["internal"], "notes.md")]
    ):
        it = item(C.MEMORY_KIND_LONG_TERM, f"Project {project} meeting note number {n}", labels=labels, source=source,
                  metadata=metadata_struct({"project": project, "n": n, "urgent": n == 1}))  # fmt: skip
        stored[n] = await store(context_stack, me, it)

    async def ids(**flt: object) -> set[str]:
        reply = await retrieve(context_stack, me, "meeting note", C.MEMORY_KIND_LONG_TERM,
                               filter=C.ContextFilter(**flt))  # type: ignore[arg-type]  # fmt: skip
        return {i.context_id for i in reply.items}

    assert await ids(metadata_equals={"project": "apollo"}) == {stored[0], stored[1]}
    assert await ids(metadata_equals={"n": "2"}) == {stored[2]}  # numbers compare in their string form
    assert await ids(metadata_equals={"urgent": "true"}) == {stored[1]}
    assert await ids(labels_any=["pii"]) == {stored[1]}
    assert await ids(labels_none=["pii"]) == {stored[0], stored[2]}
    assert await ids(source="notes.md", metadata_equals={"project": "gemini"}) == {stored[2]}
    after = C.ContextFilter()
    after.created_after.FromNanoseconds(int((before - 60) * 1e9))
    assert await ids(created_after=after.created_after) == set(stored.values())
    after.created_after.FromNanoseconds(int((time.time() + 60) * 1e9))
    assert await ids(created_after=after.created_after) == set()
    with pytest.raises(InvalidArgumentError, match="plain top-level key"):
        await ids(metadata_equals={"a.b": "x"})


async def test_bulk_store_reports_each_item(context_stack: ContextStack) -> None:
    me = await context_stack.agent("bulky")
    items = [item(C.MEMORY_KIND_LONG_TERM, f"Bulk fact {n} about solar panels") for n in range(20)]
    items.insert(5, item(C.MEMORY_KIND_LONG_TERM, "   "))  # empty content
    items.insert(9, item(C.MEMORY_KIND_WORKING, "scratch without a task"))
    items.insert(12, item(C.MEMORY_KIND_SHORT_TERM, "recent: the user likes solar", labels=["Bad Label"]))
    reply = await context_stack.call("bulk_store", C.BulkStoreContextRequest(agent_id=me, items=items),
                                     C.BulkStoreContextResponse)  # fmt: skip
    assert (reply.stored, reply.failed) == (20, 3)
    errors = {n: r.error for n, r in enumerate(reply.results) if r.HasField("error")}
    assert sorted(errors) == [5, 9, 12]
    assert "content is empty" in errors[5].message
    assert "task_id" in errors[9].message
    assert all(e.code == "invalid_argument" for e in errors.values())
    found = await retrieve(context_stack, me, "solar panels", C.MEMORY_KIND_LONG_TERM, limit=50)
    assert len(found.items) == 20
    assert {i.context_id for i in found.items} == {r.context_id for r in reply.results if r.context_id}


async def test_update_keeps_identity_and_creation_time(context_stack: ContextStack) -> None:
    me, other = await context_stack.agent("updater"), await context_stack.agent("intruder")
    cid = await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "The office is on the third floor"))
    first = (await retrieve(context_stack, me, "office floor", C.MEMORY_KIND_LONG_TERM)).items[0]
    same = await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "The office moved to the fifth floor",
                                               context_id=cid))  # fmt: skip
    assert same == cid
    found = (await retrieve(context_stack, me, "office floor", C.MEMORY_KIND_LONG_TERM)).items
    assert [(i.context_id, i.content) for i in found] == [(cid, "The office moved to the fifth floor")]
    assert found[0].created_at == first.created_at
    assert found[0].updated_at.ToNanoseconds() > first.updated_at.ToNanoseconds()
    with pytest.raises(PermissionDeniedError, match="belongs to another agent"):
        await store(context_stack, other, item(C.MEMORY_KIND_LONG_TERM, "hijack", context_id=cid))


async def test_deletes(context_stack: ContextStack) -> None:
    me = await context_stack.agent("deleter")
    ids = [await store(context_stack, me, item(kind, f"Delete me: fact {kind}", source="tmp"))
           for kind in (C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM)]  # fmt: skip
    kept = await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "Keep me: a fact", source="keep"))
    reply = await context_stack.call("delete", C.DeleteContextRequest(agent_id=me, context_ids=ids),
                                     C.DeleteContextResponse)  # fmt: skip
    assert reply.deleted == 2
    again = await context_stack.call("delete", C.DeleteContextRequest(agent_id=me, context_ids=ids),
                                     C.DeleteContextResponse)  # fmt: skip
    assert again.deleted == 0
    await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "Delete me too", source="tmp"))
    by_filter = C.DeleteContextRequest(agent_id=me, kind=C.MEMORY_KIND_LONG_TERM, filter=C.ContextFilter(source="tmp"))
    assert (await context_stack.call("delete", by_filter, C.DeleteContextResponse)).deleted == 1
    left = await retrieve(context_stack, me, "fact", C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM)
    assert [i.context_id for i in left.items] == [kept]


async def test_bad_input_gets_clear_errors(context_stack: ContextStack) -> None:
    me = await context_stack.agent("careful")
    with pytest.raises(InvalidArgumentError, match="query is empty"):
        await retrieve(context_stack, me, "   ")
    with pytest.raises(InvalidArgumentError, match="at most 4096"):
        await retrieve(context_stack, me, "word " * 2000)
    stranger = str(uuid.uuid4())
    with pytest.raises(NotFoundError, match=stranger):
        await retrieve(context_stack, stranger, "anything")
    with pytest.raises(InvalidArgumentError, match="memory kind 9"):
        await retrieve(context_stack, me, "anything", 9)
    with pytest.raises(InvalidArgumentError, match="not a UUID"):
        await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "x", context_id="not-a-uuid"))
    with pytest.raises(InvalidArgumentError, match="over 64 KiB"):
        await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "y" * 70_000))
    with pytest.raises(InvalidArgumentError, match="limit 500"):
        await retrieve(context_stack, me, "anything", limit=500)
    with pytest.raises(InvalidArgumentError, match="is not the requesting agent"):
        await store(context_stack, me, item(C.MEMORY_KIND_LONG_TERM, "z", agent_id="someone-else"))


async def test_acknowledged_writes_survive_a_restart(context_stack: ContextStack) -> None:
    me = await context_stack.agent("durable")
    ids = set()
    for kind in (C.MEMORY_KIND_SHORT_TERM, C.MEMORY_KIND_LONG_TERM):
        ids.add(await store(context_stack, me, item(kind, "The vault code is kept by the security team")))
    await context_stack.restart()  # a new replica: Qdrant re-opened from disk, Redis as it was
    found = await retrieve(context_stack, me, "who keeps the vault code?", C.MEMORY_KIND_SHORT_TERM,
                           C.MEMORY_KIND_LONG_TERM)  # fmt: skip
    assert {i.context_id for i in found.items} == ids
