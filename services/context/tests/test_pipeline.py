"""The pure stages: query analysis, ranking, extractive answers, chunking, and filter semantics."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient, models

from symbi_common.errors import InvalidArgumentError
from symbi_context import filters, rag
from symbi_context.analysis import analyse, keywords, stem
from symbi_context.ingest import chunk_document, media_type_for, split
from symbi_context.items import metadata_struct, to_payload
from symbi_proto.v1 import context_pb2 as C

from .test_rag import make_pdf


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("Summarise the on-call rules", "summary"),
        ("List the backup locations", "list"),
        ("What is a restore drill?", "definition"),
        ("How do I rotate the signing key?", "procedure"),
        ("Who approves Friday deployments?", "question"),
        ("backup retention eu-west", "lookup"),
    ],
)
def test_intent(question: str, intent: str) -> None:
    assert analyse(question).analysis.intent == intent


def test_filters_written_in_the_question_are_taken_out() -> None:
    analysed = analyse('label:pii -label:draft source:"my notes.md" meta.team:ops after:2025-01-31 who is on call?')
    f = analysed.analysis.inferred_filter
    assert analysed.text == "who is on call?"
    assert (list(f.labels_any), list(f.labels_none), f.source) == (["pii"], ["draft"], "my notes.md")
    assert dict(f.metadata_equals) == {"team": "ops"}
    assert f.created_after.ToJsonString() == "2025-01-31T00:00:00Z"
    assert keywords("How do the backups of the 2025 database work?") == ["backups", "2025", "database", "work"]
    assert stem("policies") == stem("policy")
    assert stem("rotating") == stem("rotate")


def item(content: str, score: float, age_days: float = 0.0, now: float = 1e9) -> C.ContextItem:
    out = C.ContextItem(context_id=content[:8], content=content, score=score)
    out.updated_at.FromNanoseconds(int((now - age_days * 86_400) * 1e9))
    return out


def test_ranking_fuses_keywords_and_recency_and_drops_duplicates() -> None:
    now = 1e9
    ranked = rag.rank(
        [
            item("Backups are kept for 35 days in the object store.", 0.60, now=now),
            item("Backups are kept for 35 days in the object store!", 0.59, now=now),  # a near-duplicate
            item("Old note: the object store was migrated.", 0.62, age_days=365, now=now),
            item("Unrelated text about lunch.", 0.61, now=now),
        ],
        ["backups", "kept"],
        now=now,
    )
    assert [i.content[:10] for i in ranked] == ["Backups ar", "Unrelated ", "Old note: "]
    assert ranked[0].score == pytest.approx(0.75 * 0.60 + 0.15 * 1.0 + 0.10 * 1.0)


def test_extractive_answer_quotes_the_best_sentences_with_citations() -> None:
    answer = C.RagAnswer()
    passages = [
        item("Deploy only from main. Friday deployments need approval from the release manager.", 0.9),
        item("The release manager is Dana. She works remotely.", 0.7),
    ]
    rag.extractive(answer, passages, ["approves", "friday", "deployments"])
    assert answer.answer.startswith('"Friday deployments need approval from the release manager." [1]')
    assert (answer.citations[0].index, answer.citations[0].context_id) == (1, passages[0].context_id)
    empty = C.RagAnswer()
    rag.extractive(empty, [], ["x"])
    assert empty.answer == "No stored context answers this question."
    assert not empty.citations


def test_chunks_respect_size_and_overlap_and_keep_their_place() -> None:
    text = " ".join(f"Sentence {n} says something about topic {n % 5}." for n in range(200))
    chunks = split(text, 300, 60)
    assert all(len(c) <= 300 for c in chunks)
    assert len(chunks) > 20
    for a, b in itertools.pairwise(chunks):
        assert a[-30:] in b  # the overlap repeats the end of the previous chunk
    joined = " ".join(chunks)
    assert all(sentence.strip(".") in joined for sentence in text.split(". "))  # nothing is lost
    md = chunk_document(b"# A\nintro\n## B\nbody b\n### C\nbody c\n## D\nbody d", "text/markdown")
    assert [c.metadata.get("section") for c in md] == ["A", "A > B", "A > B > C", "A > D"]
    pdf = chunk_document(make_pdf(["page one text.", "page two text."]), "application/pdf")
    assert [(c.text, c.metadata["page"]) for c in pdf] == [("page one text.", 1), ("page two text.", 2)]
    assert media_type_for("notes.MD") == "text/markdown"
    with pytest.raises(InvalidArgumentError, match="overlap"):
        chunk_document(b"x", "text/plain", chunk_size=200, overlap=150)


LABELS = st.lists(st.sampled_from(["pii", "phi", "public", "draft"]), max_size=3, unique=True)
PAYLOADS = st.lists(
    st.fixed_dictionaries(
        {"labels": LABELS, "team": st.sampled_from(["ops", "dev", 7]), "source": st.sampled_from(["a", "b"]),
         "age": st.integers(0, 10)}
    ),
    min_size=1,
    max_size=12,
)  # fmt: skip
FILTERS = st.builds(
    lambda team, any_, none, source, after: C.ContextFilter(
        metadata_equals={"team": team} if team else {}, labels_any=any_, labels_none=none, source=source,
        created_after=C.ContextFilter().created_after if after is None else _ts(after),
    ),
    st.sampled_from(["", "ops", "7"]), LABELS, LABELS, st.sampled_from(["", "a"]),
    st.one_of(st.none(), st.integers(0, 10)),
)  # fmt: skip


def _ts(age: int) -> Timestamp:
    flt = C.ContextFilter()
    flt.created_after.FromNanoseconds(int((1e9 - age * 86_400 - 1) * 1e9))
    return flt.created_after


@settings(max_examples=40, deadline=None)
@given(PAYLOADS, FILTERS)
def test_redis_and_qdrant_filters_agree(rows: list[dict[str, Any]], flt: C.ContextFilter) -> None:
    """``filters.matches`` (short-term items) and ``filters.to_qdrant`` (Qdrant) select the same items."""
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config=models.VectorParams(size=2, distance=models.Distance.COSINE))
    payloads = []
    for n, row in enumerate(rows):
        it = C.ContextItem(agent_id="a", kind=C.MEMORY_KIND_LONG_TERM, content=f"item {n}", labels=row["labels"],
                           source=str(row["source"]), metadata=metadata_struct({"team": row["team"]}))  # fmt: skip
        payloads.append(to_payload(it, created=1e9 - int(row["age"]) * 86_400))
    client.upsert("c", [models.PointStruct(id=n, vector=[1.0, 0.5], payload=p) for n, p in enumerate(payloads)])
    if not flt.HasField("created_after") or flt.created_after.seconds == 0:
        flt.ClearField("created_after")
    records, _ = client.scroll("c", scroll_filter=filters.to_qdrant(flt, agent_id="a"), limit=100)
    assert sorted(int(r.id) for r in records) == [n for n, p in enumerate(payloads) if filters.matches(flt, p)]
    client.close()
    assert np.isfinite(time.time())
