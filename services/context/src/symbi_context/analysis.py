"""RAG stage 1, query analysis: intent, keywords, and filters written into the question.

Filters may be written as ``key:value`` tokens, which are taken out of the text that
is embedded: ``source:guide.md``, ``doc:<document id>``, ``label:pii`` (must carry),
``-label:draft`` (must not), ``after:2025-01-31``, ``before:2025-12-31``,
``meta.<key>:<value>``. Intent is read from the question's form: ``summary``
("summarise", "overview"), ``list`` ("list", "which ... are"), ``definition``
("what is", "define"), ``procedure`` ("how do/to"), ``question`` (any other
question), else ``lookup``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import context_pb2

_FILTER_TOKEN = re.compile(r"(?<!\S)(-?)(source|doc|label|after|before|meta\.[A-Za-z0-9_-]+):(\"[^\"]+\"|\S+)")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_'-]*")
STOPWORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "tell",
        "please",
        "give",
        "show",
        "explain",
        "describe",
        "list",
        "define",
        "summarise",
        "summarize",
        "overview",
        "mean",
        "means",
    }
)
_INTENTS = (
    ("summary", re.compile(r"\b(summari[sz]e|summary|overview|tl;?dr)\b", re.I)),
    ("list", re.compile(r"^\s*(list|enumerate)\b|\bwhich\b.+\bare\b", re.I)),
    ("definition", re.compile(r"^\s*(what\s+is|what\s+are|what's|define|meaning\s+of)\b", re.I)),
    ("procedure", re.compile(r"^\s*how\s+(do|does|can|should|to)\b", re.I)),
    ("question", re.compile(r"\?\s*$|^\s*(who|what|when|where|why|how|which|is|are|can|does|do)\b", re.I)),
)


@dataclass(frozen=True, slots=True)
class Analysed:
    text: str
    """The question with filter tokens removed: what is embedded."""
    analysis: context_pb2.QueryAnalysis


def analyse(question: str) -> Analysed:
    inferred = context_pb2.ContextFilter()
    for negated, key, raw in _FILTER_TOKEN.findall(question):
        _apply(inferred, bool(negated), key, raw.strip('"'))
    text = " ".join(_FILTER_TOKEN.sub(" ", question).split())
    if not text:
        raise InvalidArgumentError("the question has only filters and nothing to ask")
    analysis = context_pb2.QueryAnalysis(intent=intent(text), keywords=keywords(text))
    analysis.inferred_filter.CopyFrom(inferred)
    return Analysed(text, analysis)


def _apply(flt: context_pb2.ContextFilter, negated: bool, key: str, value: str) -> None:
    if key == "label":
        (flt.labels_none if negated else flt.labels_any).append(value.lower())
    elif key == "source":
        flt.source = value
    elif key == "doc":
        flt.document_id = value
    elif key in ("after", "before"):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidArgumentError(f"{key}:{value} is not an ISO date (YYYY-MM-DD)") from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        (flt.created_after if key == "after" else flt.created_before).FromDatetime(when)
    else:
        flt.metadata_equals[key.removeprefix("meta.")] = value


def intent(text: str) -> str:
    for name, pattern in _INTENTS:
        if pattern.search(text):
            return name
    return "lookup"


def keywords(text: str) -> list[str]:
    """Content words of the question, lower case, in order, without repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        word = word.strip("'-")
        if (len(word) >= 2 and word not in STOPWORDS and not word.isdigit()) or (word.isdigit() and len(word) >= 3):
            seen.setdefault(word, None)
    return list(seen)


def stem(word: str) -> str:
    """A light stem so "policies" meets "policy" and "rotating" meets "rotate"."""
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + keep
            break
    return word[:-1] if word.endswith("e") and len(word) > 4 else word
