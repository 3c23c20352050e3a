"""The RAG pipeline: analysis → search → retrieval → ranking → generation, each stage timed.

1. **analysis** (``analysis.analyse``): intent, keywords, filters written in the question;
2. **search**: embed the question, nearest neighbours in each memory kind asked
   (default: the agent's long-term memory and the shared knowledge it may read);
3. **retrieval**: the policy screens the shared candidates (withheld ones are dropped);
   the rest become passages;
4. **ranking**: fused score = 0.75 · cosine + 0.15 · keyword coverage + 0.10 · recency
   (half-life 30 days), near-duplicates dropped (same text, or ≥ 80 % the same words);
5. **generation**: with an LLM configured (``[context].llm_model``), an answer grounded in
   the numbered passages that cites them as ``[n]``; otherwise (or ``ANSWER_MODE_EXTRACTIVE``)
   an extractive answer: the passages' sentences that best cover the question's keywords,
   quoted, each followed by its citation marker.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, SymbiError
from symbi_context import filters, reads
from symbi_context.analysis import analyse, stem
from symbi_context.items import K, check_agent_id, check_query, kind_name
from symbi_context.openai_api import OpenAICompatible
from symbi_context.stores import Stores
from symbi_proto.v1 import context_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TOP_K = 8
MAX_TOP_K = 50
PASSAGES_USED = 5
QUOTES = 3
W_VECTOR, W_KEYWORDS, W_RECENCY = 0.75, 0.15, 0.10
HALF_LIFE_DAYS = 30.0
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKER = re.compile(r"\[(\d{1,2})\]")
_WORDS = re.compile(r"[a-z0-9]+")
SYSTEM_PROMPT = (
    "Answer the question using only the numbered passages. Cite every passage you use as [n]. "
    "If the passages do not contain the answer, say that they do not."
)


@dataclass(frozen=True, slots=True)
class Generator:
    """The configured LLM: an OpenAI-compatible chat API and a model name."""

    api: OpenAICompatible
    model: str


async def ask(stores: Stores, llm: Generator | None, req: context_pb2.RagAskRequest) -> context_pb2.RagAnswer:
    answer = context_pb2.RagAnswer()
    agent = await stores.directory.get(check_agent_id(req.agent_id))
    question = check_query(req.question)
    if req.top_k > MAX_TOP_K:
        raise InvalidArgumentError(f"top_k {req.top_k} is over {MAX_TOP_K}")
    mode = req.mode or context_pb2.ANSWER_MODE_AUTO
    if mode == context_pb2.ANSWER_MODE_GENERATIVE and llm is None:
        raise FailedPreconditionError("a generative answer needs an LLM: set [context].llm_model and openai_api_key")
    filters.check_filter(req.filter)
    kinds: list[int] = sorted(set(req.kinds)) or [K.MEMORY_KIND_LONG_TERM, K.MEMORY_KIND_SHARED_KNOWLEDGE]
    for kind in kinds:
        kind_name(kind)
    top_k = req.top_k or DEFAULT_TOP_K

    async def timed(stage: str, work: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await work()
        finally:
            answer.timings.add(stage=stage).elapsed.FromNanoseconds(int((time.perf_counter() - started) * 1e9))

    analysed = await timed("analysis", _wrap(lambda: analyse(question)))
    answer.analysis.CopyFrom(analysed.analysis)
    flt = filters.merge(req.filter, analysed.analysis.inferred_filter)

    async def search() -> reads.Candidates:
        vector = (await stores.embedder.embed([analysed.text]))[0]
        return await reads.search(stores, agent, vector, kinds, flt, top_k)

    candidates = await timed("search", search)
    found = await timed("retrieval", lambda: reads.screen(stores, agent, candidates, top_k))
    ranked = await timed("ranking", _wrap(lambda: rank(found.items, list(analysed.analysis.keywords))))
    answer.passages.extend(ranked)

    async def generate() -> None:
        if mode != context_pb2.ANSWER_MODE_EXTRACTIVE and llm is not None and ranked:
            try:
                await _generative(answer, llm, analysed.text, ranked[:PASSAGES_USED], req.max_answer_tokens)
                return
            except SymbiError as exc:
                if mode == context_pb2.ANSWER_MODE_GENERATIVE:
                    raise
                log.warning("LLM answer failed (%s); answering extractively", exc)
        extractive(answer, ranked[:PASSAGES_USED], list(analysed.analysis.keywords))

    await timed("generation", generate)
    return answer


def _wrap(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def run() -> T:
        return fn()

    return run


def _stems(text: str) -> set[str]:
    return {stem(w) for w in _WORDS.findall(text.lower())}


def coverage(keywords: list[str], text: str) -> float:
    """Share of the keywords (stemmed) that occur in ``text``."""
    if not keywords:
        return 0.0
    words = _stems(text)
    return sum(1 for k in keywords if stem(k) in words) / len(keywords)


def rank(items: list[context_pb2.ContextItem], keywords: list[str], now: float = 0.0) -> list[context_pb2.ContextItem]:
    """Fused scores (into ``score``), best first, without near-duplicates."""
    now = now or time.time()
    scored = []
    for item in items:
        stamp = item.updated_at.ToNanoseconds() / 1e9 if item.HasField("updated_at") else now
        age_days = max(0.0, now - stamp) / 86_400
        recency = math.exp(-math.log(2) * age_days / HALF_LIFE_DAYS)
        fused = W_VECTOR * item.score + W_KEYWORDS * coverage(keywords, item.content) + W_RECENCY * recency
        copy = context_pb2.ContextItem()
        copy.CopyFrom(item)
        copy.score = round(fused, 6)
        scored.append(copy)
    scored.sort(key=lambda i: -i.score)
    kept: list[context_pb2.ContextItem] = []
    seen: list[set[str]] = []
    for item in scored:
        words = set(_WORDS.findall(item.content.lower()))
        if any(_similar(words, other) for other in seen):
            continue
        kept.append(item)
        seen.append(words)
    return kept


def _similar(a: set[str], b: set[str]) -> bool:
    if not a or not b:
        return a == b
    return len(a & b) / min(len(a), len(b)) >= 0.8


def extractive(answer: context_pb2.RagAnswer, passages: list[context_pb2.ContextItem], keywords: list[str]) -> None:
    """Quote the sentences that best answer, citing their passages."""
    answer.mode = context_pb2.ANSWER_MODE_EXTRACTIVE
    if not passages:
        answer.answer = "No stored context answers this question."
        return
    sentences = []
    for rank_index, passage in enumerate(passages):
        for position, sentence in enumerate(s.strip() for s in _SENTENCE.split(passage.content)):
            if len(sentence) >= 3:
                score = coverage(keywords, sentence) + 0.05 * (len(passages) - rank_index) - 0.001 * position
                sentences.append((score, rank_index, position, sentence))
    sentences.sort(key=lambda s: -s[0])
    chosen = [s for s in sentences if s[0] > 0.05 * len(passages)][:QUOTES] or sentences[:1]
    chosen.sort(key=lambda s: (s[1], s[2]))  # passage order, then reading order
    numbers: dict[int, int] = {}
    parts = []
    for _, rank_index, _, sentence in chosen:
        if rank_index not in numbers:
            numbers[rank_index] = len(numbers) + 1
            passage = passages[rank_index]
            answer.citations.add(index=numbers[rank_index], context_id=passage.context_id, source=passage.source,
                                 document_id=passage.document_id, quote=sentence, score=passage.score)  # fmt: skip
        else:
            citation = answer.citations[numbers[rank_index] - 1]
            citation.quote = f"{citation.quote} {sentence}"
        parts.append(f'"{sentence}" [{numbers[rank_index]}]')
    answer.answer = " ".join(parts)


async def _generative(
    answer: context_pb2.RagAnswer, llm: Generator, question: str, passages: list[context_pb2.ContextItem], cap: int
) -> None:
    numbered = "\n\n".join(f"[{n}] ({p.source or p.context_id}) {p.content}" for n, p in enumerate(passages, 1))
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Passages:\n{numbered}\n\nQuestion: {question}"},
    ]
    reply = await llm.api.chat(llm.model, messages, max_tokens=cap)
    cited = sorted({int(m) for m in _MARKER.findall(reply.text) if 1 <= int(m) <= len(passages)})
    answer.answer, answer.model, answer.mode = reply.text, reply.model, context_pb2.ANSWER_MODE_GENERATIVE
    for n in cited:
        p = passages[n - 1]
        answer.citations.add(index=n, context_id=p.context_id, source=p.source, document_id=p.document_id,
                             quote=p.content[:500], score=p.score)  # fmt: skip
