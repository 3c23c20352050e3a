"""Ingestion and RAG over NATS: Markdown, text and PDF documents; extractive and LLM answers with citations."""

from __future__ import annotations

import pytest

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError
from symbi_context.minilm import MiniLM
from symbi_proto.v1 import context_pb2 as C

from .conftest import ContextStack
from .openai_server import ProviderState, openai_server

pytestmark = pytest.mark.integration

HANDBOOK = b"""# Operations handbook

## Backups
Backups of the customer database run every night at 02:00 UTC. They are kept for 35 days
in the eu-west object store. A restore drill happens on the first Monday of each quarter.

## On-call
The on-call engineer acknowledges pages within 15 minutes. Escalate to the incident
commander after 30 minutes without progress.

## Deployments
Deploy to production only from the main branch, after the staging smoke tests pass.
Friday deployments need approval from the release manager.
"""

NOTES = b"""Lunch orders go to the facilities team by 11:00.

The office wifi password changes every month; ask facilities for the new one."""


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (what pypdf reads back)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_no, content_no = len(objects) + 1, len(objects) + 2
        kids.append(f"{page_no} 0 R")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
                       f"/Resources << /Font << /F1 {len(pages) * 2 + 3} 0 R >> >> >>")  # fmt: skip
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


async def ingest(
    stack: ContextStack, agent: str, source: str, content: bytes, **kw: object
) -> C.IngestDocumentResponse:
    req = C.IngestDocumentRequest(agent_id=agent, kind=C.MEMORY_KIND_SHARED_KNOWLEDGE, source=source,
                                  content=content, **kw)  # type: ignore[arg-type]  # fmt: skip
    reply: C.IngestDocumentResponse = await stack.call("ingest", req, C.IngestDocumentResponse)
    return reply


async def ask(stack: ContextStack, agent: str, question: str, **kw: object) -> C.RagAnswer:
    reply: C.RagAnswer = await stack.call("ask", C.RagAskRequest(agent_id=agent, question=question, **kw),  # type: ignore[arg-type]
                                          C.RagAnswer)  # fmt: skip
    return reply


async def test_extractive_answers_cite_ingested_documents(context_stack: ContextStack) -> None:
    stack = context_stack
    writer = await stack.agent("librarian", capabilities=("shared_knowledge",))
    reader = await stack.agent("asker")
    handbook = await ingest(stack, writer, "handbook.md", HANDBOOK, labels=["internal"])
    assert handbook.chunks == len(handbook.context_ids) >= 3
    notes = await ingest(stack, writer, "notes.txt", NOTES, media_type="text/plain")
    pages = ["Travel must be booked through the travel desk.", "Hotel stays are capped at 180 EUR per night."]
    pdf = await ingest(stack, writer, "policy.pdf", make_pdf(pages))
    assert pdf.chunks == 2

    answer = await ask(stack, reader, "How long are database backups kept?")
    assert answer.mode == C.ANSWER_MODE_EXTRACTIVE
    assert "35 days" in answer.answer
    assert "[1]" in answer.answer
    first = answer.citations[0]
    assert (first.index, first.source, first.document_id) == (1, "handbook.md", handbook.document_id)
    assert "35 days" in first.quote
    assert first.context_id in handbook.context_ids
    assert answer.passages[0].metadata["section"] == "Operations handbook > Backups"
    assert [t.stage for t in answer.timings] == ["analysis", "search", "retrieval", "ranking", "generation"]
    assert all(t.elapsed.ToNanoseconds() > 0 for t in answer.timings)
    assert answer.analysis.intent == "procedure" or answer.analysis.intent == "question"
    assert {"database", "backups", "kept"} <= set(answer.analysis.keywords)

    hotel = await ask(stack, reader, "What is the maximum hotel price per night?")
    assert "180 EUR" in hotel.answer
    assert hotel.citations[0].source == "policy.pdf"
    assert hotel.passages[0].metadata["page"] == 2

    # a filter written in the question narrows the search to one source
    wifi = await ask(stack, reader, "source:notes.txt what changes every month?")
    assert wifi.analysis.inferred_filter.source == "notes.txt"
    assert {p.source for p in wifi.passages} == {"notes.txt"}
    assert "wifi password" in wifi.answer
    assert wifi.citations[0].document_id == notes.document_id

    nothing = await ask(stack, reader, "label:nonexistent who cooks dinner?")
    assert (nothing.answer, list(nothing.citations)) == ("No stored context answers this question.", [])


async def test_generative_answers_through_an_openai_compatible_api(context_stack: ContextStack) -> None:
    stack = context_stack
    provider = ProviderState(MiniLM())
    with openai_server(provider) as base_url:
        await stack.restart(llm_model="tiny-llm", openai_api_key="sk-test-key-1", openai_base_url=base_url)
        writer = await stack.agent("librarian", capabilities=("shared_knowledge",))
        await ingest(stack, writer, "handbook.md", HANDBOOK)
        answer = await ask(stack, writer, "Who approves Friday deployments?")
        assert answer.mode == C.ANSWER_MODE_GENERATIVE
        assert answer.model == "tiny-llm"
        assert answer.answer.endswith("[1]")
        assert [c.index for c in answer.citations] == [1]
        assert "release manager" in answer.citations[0].quote
        chat = [r for r in provider.requests if r.path == "/v1/chat/completions"]
        assert chat[0].headers["Authorization"] == "Bearer sk-test-key-1"
        assert "Friday deployments need approval" in chat[0].body["messages"][-1]["content"]

        extractive = await ask(stack, writer, "Who approves Friday deployments?", mode=C.ANSWER_MODE_EXTRACTIVE)
        assert extractive.mode == C.ANSWER_MODE_EXTRACTIVE
        assert len([r for r in provider.requests if r.path == "/v1/chat/completions"]) == 1

        provider.fail_next(400)  # not retried; AUTO falls back to the extractive answer and says so by its mode
        fallback = await ask(stack, writer, "Who approves Friday deployments?")
        assert fallback.mode == C.ANSWER_MODE_EXTRACTIVE
        assert "release manager" in fallback.answer
        provider.fail_next(400)
        with pytest.raises(InvalidArgumentError, match="400"):
            await ask(stack, writer, "Who approves Friday deployments?", mode=C.ANSWER_MODE_GENERATIVE)


async def test_bad_documents_and_questions(context_stack: ContextStack) -> None:
    stack = context_stack
    writer = await stack.agent("librarian", capabilities=("shared_knowledge",))
    with pytest.raises(InvalidArgumentError, match="media type"):
        await ingest(stack, writer, "sheet.xlsx", b"PK\x03\x04")
    with pytest.raises(InvalidArgumentError, match="cannot read the PDF"):
        await ingest(stack, writer, "broken.pdf", b"%PDF-1.4 garbage")
    with pytest.raises(InvalidArgumentError, match="not UTF-8"):
        await ingest(stack, writer, "latin.txt", "café".encode("latin-1"))
    with pytest.raises(InvalidArgumentError, match="empty"):
        await ingest(stack, writer, "empty.md", b"")
    with pytest.raises(InvalidArgumentError, match="chunk_size"):
        await ingest(stack, writer, "a.md", b"text", chunking=C.ChunkingOptions(chunk_size=10))
    with pytest.raises(InvalidArgumentError, match="only filters"):
        await ask(stack, writer, "source:a.md")
    with pytest.raises(FailedPreconditionError, match="needs an LLM"):
        await ask(stack, writer, "anything?", mode=C.ANSWER_MODE_GENERATIVE)
    with pytest.raises(InvalidArgumentError, match="not an ISO date"):
        await ask(stack, writer, "after:yesterday what happened?")
