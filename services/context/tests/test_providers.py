"""Embeddings from an OpenAI-compatible API over real HTTP: order, batching, cache, checks, errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from symbi_common.errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError
from symbi_context.embedder import REMOTE_BATCH, EmbeddingMetrics, RemoteEmbedder
from symbi_context.minilm import MiniLM
from symbi_context.openai_api import OpenAICompatible
from symbi_proto.v1 import context_pb2 as C

from .conftest import ContextStack
from .openai_server import ProviderState, openai_server

MODEL = MiniLM()


@pytest.fixture
def provider() -> Iterator[tuple[ProviderState, str]]:
    state = ProviderState(MODEL)
    with openai_server(state) as url:
        yield state, url


def embedder(url: str, *, dimension: int = 384, key: str = "sk-abc", cache: int = 100) -> RemoteEmbedder:
    # A generous timeout per call (the test server embeds for real, on a shared machine); retries give up after 2 s.
    api = OpenAICompatible(url, key, timeout_s=60, retry_deadline_s=2)
    return RemoteEmbedder(api, "text-embedding-test", dimension, cache_size=cache, timeout_s=120,
                          metrics=EmbeddingMetrics(CollectorRegistry()))  # fmt: skip


async def test_vectors_come_back_in_order_batched_and_cached(provider: tuple[ProviderState, str]) -> None:
    state, url = provider
    remote = embedder(url, cache=1000)
    try:
        texts = [f"sentence number {n} about topic {n % 7}" for n in range(REMOTE_BATCH + 10)]
        vectors = await remote.embed(texts)
        assert vectors.shape == (len(texts), 384)
        sample = [0, 1, 7, REMOTE_BATCH - 1, REMOTE_BATCH, len(texts) - 1]  # the server answers in reverse order
        assert np.allclose(vectors[sample], MODEL.encode([texts[i] for i in sample]), atol=1e-5)
        calls = [r for r in state.requests if r.path == "/v1/embeddings"]
        assert [len(r.body["input"]) for r in calls] == [REMOTE_BATCH, 10]
        assert calls[0].body["model"] == "text-embedding-test"
        assert calls[0].headers["Authorization"] == "Bearer sk-abc"
        again = await remote.embed([*texts[:5], "a new one"])
        assert len(state.requests) == 3  # only the new text was sent
        assert state.requests[-1].body["input"] == ["a new one"]
        assert np.allclose(again[:5], vectors[:5])
    finally:
        await remote.api.close()


async def test_wrong_dimension_and_http_errors_are_typed(provider: tuple[ProviderState, str]) -> None:
    state, url = provider
    remote = embedder(url, dimension=512)
    try:
        state.dimension = 1536
        with pytest.raises(FailedPreconditionError, match=r"returned \[1536\] dimensions; the collections hold 512"):
            await remote.embed(["too many dimensions"])
        state.dimension = 512
        assert (await remote.embed(["right size"])).shape == (1, 512)
        state.fail_next(503, times=2)  # retried within the deadline
        assert (await remote.embed(["after two failures"])).shape == (1, 512)
        state.fail_next(401)
        with pytest.raises(FailedPreconditionError, match="openai_api_key"):
            await remote.embed(["unauthorised"])
        state.fail_next(400)
        with pytest.raises(InvalidArgumentError, match="400"):
            await remote.embed(["bad request"])
        state.fail_next(500, times=50)
        with pytest.raises(DeadlineExceededError, match="gave up"):
            await remote.embed(["always failing"])
        with pytest.raises(InvalidArgumentError, match="empty"):
            await remote.embed(["  "])
    finally:
        await remote.api.close()


async def test_unreachable_provider(provider: tuple[ProviderState, str]) -> None:
    remote = embedder("http://127.0.0.1:1/v1")
    try:
        with pytest.raises(DeadlineExceededError, match="cannot reach"):
            await remote.embed(["hello"])
    finally:
        await remote.api.close()


@pytest.mark.integration
async def test_the_service_embeds_through_the_provider(
    context_stack: ContextStack, provider: tuple[ProviderState, str]
) -> None:
    state, url = provider
    stack = context_stack
    await stack.restart(embedding_provider="openai", embedding_model="text-embedding-test", openai_api_key="sk-1",
                        openai_base_url=url)  # fmt: skip
    me = await stack.agent("remote")
    for text in ("The printer on floor 2 is out of toner.", "Quarterly taxes are due in April."):
        await stack.call("store", C.StoreContextRequest(agent_id=me, item=C.ContextItem(
            kind=C.MEMORY_KIND_LONG_TERM, content=text)), C.StoreContextResponse)  # fmt: skip
    found = await stack.call("retrieve", C.RetrieveContextRequest(agent_id=me, query="when must taxes be paid?"),
                             C.ContextSearchResponse)  # fmt: skip
    assert found.embedding_model == "text-embedding-test"
    assert found.items[0].content == "Quarterly taxes are due in April."
    assert any(r.path == "/v1/embeddings" and "when must taxes be paid?" in r.body["input"] for r in state.requests)
    state.dimension = 768  # the provider changed models under us: nothing is stored with the wrong size
    with pytest.raises(FailedPreconditionError, match="384"):
        await stack.call("store", C.StoreContextRequest(agent_id=me, item=C.ContextItem(
            kind=C.MEMORY_KIND_LONG_TERM, content="a new fact")), C.StoreContextResponse)  # fmt: skip
