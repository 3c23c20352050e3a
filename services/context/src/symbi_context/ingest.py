"""Documents into chunks: plain text, Markdown (split by headings) and PDF (by page, with pypdf).

Each chunk is cut at paragraph, then sentence, then word boundaries to at most
``chunk_size`` characters, with ``overlap`` characters of the previous chunk
repeated at its start so a passage cut in two can still be found whole. Chunks
carry where they came from in their metadata: ``section`` (the Markdown heading
path) or ``page`` (PDF, 1-based), and ``media_type``.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from symbi_common.errors import InvalidArgumentError

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 800
DEFAULT_OVERLAP = 100
MIN_CHUNK, MAX_CHUNK = 100, 4000
MAX_CHUNKS = 1000
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MEDIA_TYPES = ("text/plain", "text/markdown", "application/pdf")
_SUFFIXES = {".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown",
             ".pdf": "application/pdf"}  # fmt: skip
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def media_type_for(name: str, given: str = "") -> str:
    """The media type to parse ``name`` as: the given one, else from its suffix."""
    if given:
        kind = given.split(";", 1)[0].strip().lower()
        if kind not in MEDIA_TYPES:
            raise InvalidArgumentError(f"media type {given!r} is not supported ({', '.join(MEDIA_TYPES)})")
        return kind
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if suffix not in _SUFFIXES:
        raise InvalidArgumentError(f"cannot tell the media type of {name!r}; name it ({', '.join(MEDIA_TYPES)})")
    return _SUFFIXES[suffix]


def chunk_document(content: bytes, media_type: str, *, chunk_size: int = 0, overlap: int = 0) -> list[Chunk]:
    size = chunk_size or DEFAULT_CHUNK
    over = overlap if chunk_size else (overlap or DEFAULT_OVERLAP)
    if not MIN_CHUNK <= size <= MAX_CHUNK:
        raise InvalidArgumentError(f"chunk_size {size} is outside {MIN_CHUNK}..{MAX_CHUNK} characters")
    if not 0 <= over < size // 2:
        raise InvalidArgumentError(f"overlap {over} must be less than half the chunk size ({size})")
    if not content:
        raise InvalidArgumentError("the document is empty")
    if len(content) > MAX_DOCUMENT_BYTES:
        raise InvalidArgumentError(f"the document is over {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB")
    sections = _sections(content, media_type)
    chunks = [
        Chunk(text, {**meta, "media_type": media_type}) for meta, body in sections for text in split(body, size, over)
    ]
    if not chunks:
        raise InvalidArgumentError("the document has no text to index")
    if len(chunks) > MAX_CHUNKS:
        raise InvalidArgumentError(f"the document makes {len(chunks)} chunks; at most {MAX_CHUNKS} per document")
    return chunks


def _sections(content: bytes, media_type: str) -> list[tuple[dict[str, Any], str]]:
    if media_type == "application/pdf":
        return _pdf_pages(content)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"the {media_type} document is not UTF-8: {exc}") from None
    if media_type == "text/markdown":
        return _markdown_sections(text)
    return [({}, text)]


def _markdown_sections(text: str) -> list[tuple[dict[str, Any], str]]:
    """Split at headings; each section knows its heading path ("Guide > Install")."""
    path: list[tuple[int, str]] = []
    out: list[tuple[dict[str, Any], str]] = []
    lines: list[str] = []
    fenced = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            out.append(({"section": " > ".join(title for _, title in path)} if path else {}, body))
        lines.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading:
            flush()
            level, title = len(heading.group(1)), heading.group(2).strip()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, title))
            lines.append(title)
            continue
        lines.append(line)
    flush()
    return out


def _pdf_pages(content: bytes) -> list[tuple[dict[str, Any], str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            raise InvalidArgumentError("the PDF is encrypted")
        pages = [(number, page.extract_text() or "") for number, page in enumerate(reader.pages, start=1)]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"cannot read the PDF: {exc}") from None
    return [({"page": number}, text) for number, text in pages if text.strip()]


def split(text: str, size: int, overlap: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``size`` characters at the gentlest boundary available."""
    units = _units(re.sub(r"[ \t]+", " ", text).strip(), size - overlap)
    chunks: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}\n\n{unit}" if current else unit
        if len(candidate) <= size:
            current = candidate
            continue
        if current:
            chunks.append(current)
        tail = _tail(current, overlap) if current else ""
        current = f"{tail} {unit}".strip() if tail and len(tail) + 1 + len(unit) <= size else unit
    if current:
        chunks.append(current)
    return chunks


def _units(text: str, size: int) -> list[str]:
    """Paragraphs; a paragraph too long becomes sentences; a sentence too long becomes word runs."""
    out: list[str] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        if len(paragraph) <= size:
            out.append(paragraph)
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            if len(sentence) <= size:
                out.append(sentence)
                continue
            words, run = sentence.split(), ""
            for word in words:
                while len(word) > size:  # one unbroken token longer than a chunk
                    if run:
                        out.append(run)
                        run = ""
                    out.append(word[:size])
                    word = word[size:]
                if run and len(run) + 1 + len(word) > size:
                    out.append(run)
                    run = word
                else:
                    run = f"{run} {word}".strip()
            if run:
                out.append(run)
    return out


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, starting at a word."""
    if overlap <= 0:
        return ""
    tail = text[-overlap:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 and len(text) > overlap else tail
