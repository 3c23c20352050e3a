"""Tool results and resource contents as the gateway returns them: hashed, sized, cut to the cap.

The result hash (recorded in audit) is SHA-256 of the canonical JSON of the whole
result as the server sent it (``content``, ``structuredContent``, ``isError``), before
any cut. What the caller receives is cut to ``max_bytes``: content blocks are kept in
order while they fit (a text block may be cut at a character boundary, a binary
block is kept whole or dropped), the structured result only if it fits in what is
left, and ``truncated`` says that something was left out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from symbi_mcp_gateway.signatures import canonical_json
from symbi_proto.v1 import tools_pb2


@dataclass(frozen=True, slots=True)
class Shaped:
    content: list[tools_pb2.ToolContent]
    structured_json: str
    truncated: bool
    sha256: bytes
    size: int
    """Bytes of the canonical result as the server sent it."""


def _cut_text(text: str, budget: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= budget:
        return text
    return data[: max(0, budget)].decode("utf-8", "ignore")


def _block(item: Any, budget: int) -> tuple[tools_pb2.ToolContent | None, int, bool]:
    """One content block within ``budget`` bytes: (block or None, bytes used, cut)."""
    kind = getattr(item, "type", "")
    if isinstance(item, types.TextContent):
        text = _cut_text(item.text, budget)
        return tools_pb2.ToolContent(type="text", text=text), len(text.encode()), text != item.text
    if isinstance(item, (types.ImageContent, types.AudioContent)):
        try:
            data = base64.b64decode(item.data, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if len(data) > budget:
            return None, 0, True
        return tools_pb2.ToolContent(type=kind, data=data, mime_type=item.mime_type or ""), len(data), False
    if isinstance(item, types.ResourceLink):
        uri = str(item.uri)
        return tools_pb2.ToolContent(type="resource_link", uri=uri, mime_type=item.mime_type or ""), len(uri), False
    if isinstance(item, types.EmbeddedResource):
        resource = item.resource
        uri, mime = str(resource.uri), resource.mime_type or ""
        if isinstance(resource, types.TextResourceContents):
            text = _cut_text(resource.text, budget)
            block = tools_pb2.ToolContent(type="resource", text=text, uri=uri, mime_type=mime)
            return block, len(text.encode()), text != resource.text
        blob = base64.b64decode(resource.blob) if isinstance(resource, types.BlobResourceContents) else b""
        if len(blob) > budget:
            return None, 0, True
        return tools_pb2.ToolContent(type="resource", data=blob, uri=uri, mime_type=mime), len(blob), False
    text = _cut_text(json.dumps(item.model_dump(mode="json", by_alias=True)), budget)
    return tools_pb2.ToolContent(type=str(kind or "unknown"), text=text), len(text.encode()), True


def shape(result: types.CallToolResult, max_bytes: int) -> Shaped:
    whole = {
        "content": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in result.content],
        "structuredContent": result.structured_content,
        "isError": bool(result.is_error),
    }
    canonical = canonical_json(whole)
    budget, truncated = max_bytes, False
    content: list[tools_pb2.ToolContent] = []
    for item in result.content:
        block, used, cut = _block(item, budget)
        truncated |= cut
        if block is not None and (used or not cut):
            content.append(block)
            budget -= used
    structured = ""
    if result.structured_content is not None:
        text = json.dumps(result.structured_content, sort_keys=True)
        if len(text.encode()) <= budget:
            structured = text
        else:
            truncated = True
    return Shaped(content, structured, truncated, hashlib.sha256(canonical).digest(), len(canonical))


def shape_resource(result: types.ReadResourceResult, max_bytes: int) -> tuple[list[tools_pb2.ResourceContents], bool]:
    budget, truncated = max_bytes, False
    out: list[tools_pb2.ResourceContents] = []
    for item in result.contents:
        uri, mime = str(item.uri), item.mime_type or ""
        if isinstance(item, types.TextResourceContents):
            text = _cut_text(item.text, budget)
            truncated |= text != item.text
            out.append(tools_pb2.ResourceContents(uri=uri, mime_type=mime, text=text))
            budget -= len(text.encode())
            continue
        blob = base64.b64decode(item.blob)
        if len(blob) > budget:
            truncated = True
            continue
        out.append(tools_pb2.ResourceContents(uri=uri, mime_type=mime, blob=blob))
        budget -= len(blob)
    return out, truncated
