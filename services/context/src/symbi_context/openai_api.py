"""An OpenAI-compatible HTTP API: ``POST /embeddings`` and ``POST /chat/completions``.

Used only when configured (``[context].embedding_provider = "openai"`` or
``[context].llm_model``), with ``[context].openai_base_url`` and ``openai_api_key``.
Every call has the configured timeout; failures become typed errors here:
unreachable, 5xx and 429 are ``UnavailableError`` (retried by the caller's policy),
401/403 ``FailedPreconditionError`` (a configuration problem), other 4xx
``InvalidArgumentError``, and a reply of the wrong shape ``InternalError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from symbi_common.errors import (
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    SymbiError,
    UnavailableError,
)
from symbi_common.retry import RetryPolicy, retry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatReply:
    text: str
    model: str


class OpenAICompatible:
    """One connection pool to the provider; ``close`` at shutdown."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float, retry_deadline_s: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout_s),
        )
        self._retry = RetryPolicy(deadline_s=retry_deadline_s or timeout_s, max_backoff_s=1.0)

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            try:
                response = await self._client.post(path, json=body)
            except httpx.TimeoutException as exc:
                raise UnavailableError(f"{self.base_url}{path} timed out: {exc!r}") from exc
            except httpx.HTTPError as exc:
                raise UnavailableError(f"cannot reach {self.base_url}{path}: {exc!r}") from exc
            return _decode(response, f"{self.base_url}{path}")

        return await retry(attempt, self._retry, what=f"POST {self.base_url}{path}")

    async def embeddings(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        reply = await self._post("/embeddings", {"model": model, "input": list(texts)})
        data = reply.get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise InternalError(f"embeddings reply has {_count(data)} vectors for {len(texts)} inputs")
        ordered: list[list[float]] = [[] for _ in texts]
        for position, entry in enumerate(data):
            index = entry.get("index", position) if isinstance(entry, dict) else None
            vector = entry.get("embedding") if isinstance(entry, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(texts) or not isinstance(vector, list):
                raise InternalError("embeddings reply has an entry without a valid index and embedding")
            if not all(isinstance(x, (int, float)) for x in vector):
                raise InternalError("embeddings reply has a vector that is not all numbers")
            ordered[index] = [float(x) for x in vector]
        if any(not vector for vector in ordered):
            raise InternalError("embeddings reply misses some inputs")
        return ordered

    async def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int) -> ChatReply:
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0}
        if max_tokens:
            body["max_tokens"] = max_tokens
        reply = await self._post("/chat/completions", body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InternalError("chat reply has no choices[0].message.content") from None
        if not isinstance(text, str):
            raise InternalError("chat reply content is not text")
        return ChatReply(text=text, model=str(reply.get("model") or model))


def _decode(response: httpx.Response, url: str) -> dict[str, Any]:
    if response.status_code >= 400:
        detail = response.text[:300]
        err: SymbiError
        if response.status_code in (401, 403):
            err = FailedPreconditionError(f"{url}: {response.status_code} (check [context].openai_api_key): {detail}")
        elif response.status_code == 429 or response.status_code >= 500:
            err = UnavailableError(f"{url}: {response.status_code}: {detail}")
        else:
            err = InvalidArgumentError(f"{url}: {response.status_code}: {detail}")
        raise err
    try:
        body = response.json()
    except ValueError:
        raise InternalError(f"{url}: the reply is not JSON") from None
    if not isinstance(body, dict):
        raise InternalError(f"{url}: the reply is not a JSON object")
    return body


def _count(data: object) -> int:
    return len(data) if isinstance(data, list) else 0
