"""Context: retrieval latency, vector search by collection size, RAG end to end, embeddings, recall@5.

Measured:

- **embeddings**: the local all-MiniLM-L6-v2 (numpy) on chunk-sized texts in batches of
  32: texts/s; one short query: p50/p99 latency;
- **vector search by collection size** on the embedded backend (qdrant-client local
  mode, the code path ``symbi_context.vectors`` runs): top-10 search p50/p99, without
  and with a payload filter, at each size; the first size whose p50 passes 50 ms is
  where local mode stops being acceptable for interactive retrieval. The scaling
  collections hold random unit vectors (exact search costs the same whatever the
  vectors say); upserts on disk (one SQLite transaction per point) are timed apart;
- **through the service** (``symbi serve policy``, ``lifecycle`` and ``context``, each its
  own process, with NATS and Redis): ``retrieve_context`` and ``search_knowledge``
  latency (mean, p50, p99; every query new, so each is embedded), and RAG ``ask`` end
  to end with extractive answers (mean, p50, p99, time per stage);
- **retrieval quality**: recall@5 of ``search_knowledge`` on the labelled set in
  ``benchmarks/data/context_qa.json`` (40 passages, 40 paraphrased questions).

Baselines in the same run: a numpy brute-force top-10 (matrix product and partial sort)
over the same vectors, for search; the in-process floor of a retrieval (embed the query,
numpy search) for the service's latency; keyword-overlap ranking for recall@5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from symbi_common import embedded, natsio, subjects
from symbi_common.context_client import ContextClient
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.settings import NatsSettings
from symbi_context import filters, rag
from symbi_context.analysis import keywords
from symbi_context.items import to_payload
from symbi_context.minilm import MiniLM
from symbi_context.vectors import Point, VectorStore
from symbi_proto.v1 import agent_pb2, context_pb2, health_pb2

DATA = json.loads((Path(__file__).parent / "data" / "context_qa.json").read_text())
BUDGET_MS = 50.0
POLICY = """
id: bench-context
rules:
  - name: bench-creates
    effect: allow
    actions: [agent_create]
    when: subject.id == "bench"
  - name: own-memory
    effect: allow
    actions: [data_access]
    operations: [read, write, delete]
    resources: [memory, working]
    when: resource.owner == subject.id
  - name: knowledge
    effect: allow
    actions: [data_access]
    operations: [read, write]
    resources: [knowledge]
"""
AGENT = {
    "metadata": {"name": "bench_reader", "version": "1.0.0"},
    "capabilities": ["read_memory", "shared_knowledge"],
    "tenant": "bench",
    "with": {"sandbox": "Tier1", "timeout": "30s", "memory": "128MB"},
    "task": {"command": ["true"]},
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in values]
    return {"mean_ms": statistics.fmean(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}


def chunk_texts(count: int) -> list[str]:
    passages = [p["text"] for p in DATA["passages"]]
    return [" ".join(passages[(n + k) % len(passages)] for k in range(4)) + f" ({n})" for n in range(count)]


# Embeddings ------------------------------------------------------------------------


def embeddings(model: MiniLM, texts: int, queries: int) -> dict[str, Any]:
    corpus = chunk_texts(texts)
    model.encode(corpus[:4])  # warm up
    started = time.perf_counter()
    for start in range(0, len(corpus), 32):
        model.encode(corpus[start : start + 32])
    elapsed = time.perf_counter() - started
    tokens = sum(model.token_count(t) for t in corpus)
    lat = []
    for n in range(queries):
        question = DATA["questions"][n % len(DATA["questions"])]["q"] + f" {n}"
        t0 = time.perf_counter()
        model.encode([question])
        lat.append(time.perf_counter() - t0)
    return {"texts_per_s": len(corpus) / elapsed, "tokens_per_s": tokens / elapsed,
            "mean_tokens": tokens / len(corpus), "query": summary(lat)}  # fmt: skip


# Vector search by size ---------------------------------------------------------------


def unit_vectors(rng: np.random.Generator, count: int, dim: int = 384) -> np.ndarray[Any, Any]:
    v = rng.standard_normal((count, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)  # type: ignore[no-any-return]


def payload(n: int, rng: np.random.Generator) -> dict[str, Any]:
    item = context_pb2.ContextItem(agent_id=f"agent-{n % 20}", kind=context_pb2.MEMORY_KIND_LONG_TERM,
                                   content=f"item {n}", labels=["pii"] if rng.random() < 0.1 else ["internal"],
                                   source=f"doc-{n % 100}")  # fmt: skip
    return to_payload(item)


async def search_scaling(sizes: list[int], searches: int, disk_points: int, root: Path) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {"sizes": []}
    store = VectorStore(QdrantClient(":memory:"), "bench", 384, local=True, where=":memory:", timeout_s=600)
    await store.ensure_collections(["long_term"])
    vectors = np.zeros((0, 384), dtype=np.float32)
    flt = filters.to_qdrant(context_pb2.ContextFilter(labels_none=["pii"]), agent_id="agent-3")
    for size in sizes:
        fresh = unit_vectors(rng, size - len(vectors))
        points = [Point(str(uuid.uuid4()), v, payload(len(vectors) + i, rng)) for i, v in enumerate(fresh)]
        t0 = time.perf_counter()
        await store.upsert("long_term", points)
        upsert_s = time.perf_counter() - t0
        vectors = np.concatenate([vectors, fresh])
        queries = unit_vectors(rng, searches)
        plain, filtered, floor = [], [], []
        for q in queries:
            t0 = time.perf_counter()
            await store.search("long_term", q, None, 10)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await store.search("long_term", q, flt, 10)
            filtered.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scores = vectors @ q
            top = np.argpartition(-scores, 10)[:10]
            top[np.argsort(-scores[top])]
            floor.append(time.perf_counter() - t0)
        out["sizes"].append({"points": size, "search": summary(plain), "filtered": summary(filtered),
                             "numpy": summary(floor), "upsert_per_s": len(points) / upsert_s})  # fmt: skip
    await store.close()
    for key, measure in (("too_slow_from", "search"), ("filtered_too_slow_from", "filtered")):
        slow = [s["points"] for s in out["sizes"] if s[measure]["p50_ms"] > BUDGET_MS]
        out[key] = slow[0] if slow else 0
    disk = VectorStore.open(url="", path=root / "qdrant-disk", api_key="", prefix="bench", dimension=384,
                            timeout_s=600)  # fmt: skip
    await disk.ensure_collections(["long_term"])
    points = [Point(str(uuid.uuid4()), v, payload(i, rng)) for i, v in enumerate(unit_vectors(rng, disk_points))]
    t0 = time.perf_counter()
    await disk.upsert("long_term", points)
    out["disk_upsert_per_s"] = disk_points / (time.perf_counter() - t0)
    await disk.close()
    return out


# Through the service ------------------------------------------------------------------


async def wait_healthy(nc: Any, service: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = await natsio.request(nc, subjects.health(service), health_pb2.HealthRequest(),
                                          health_pb2.HealthStatus, timeout=2)  # fmt: skip
            if status.status == health_pb2.SERVING_STATUS_SERVING:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"{service} did not become healthy in {timeout_s}s")


async def timed(count: int, fn: Callable[[int], Awaitable[object]]) -> list[float]:
    lat = []
    for i in range(count):
        t0 = time.perf_counter()
        await fn(i)
        lat.append(time.perf_counter() - t0)
    return lat


async def through_service(root: Path, model: MiniLM, retrievals: int, asks: int) -> dict[str, Any]:
    nats = embedded.start_nats(root / "nats")
    redis_server = embedded.start_redis(root / "redis")
    (root / "policies").mkdir()
    (root / "policies" / "bench.yaml").write_text(POLICY)
    port = embedded.free_port()
    env = {**os.environ, "SYMBI_NATS_URL": nats.url, "SYMBI_REDIS_URL": redis_server.url,
           "SYMBI_STATE_DIR": str(root / "state"), "SYMBI_METRICS_PORT": "0", "SYMBI_LOG_LEVEL": "WARNING",
           "SYMBI_POLICY_PORT": str(port), "SYMBI_POLICY_ADDR": f"127.0.0.1:{port}",
           "SYMBI_POLICY_DIR": str(root / "policies")}  # fmt: skip
    procs = {name: embedded.ManagedProcess(name, [sys.executable, "-m", "symbi_cli", "serve", name],
                                           root / f"{name}.log", env=env)
             for name in ("policy", "lifecycle", "context")}  # fmt: skip
    for proc in procs.values():
        proc.start()
    nc = await natsio.connect(NatsSettings(url=nats.url), "bench")
    try:
        for name in procs:
            await wait_healthy(nc, name)
        source = agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_JSON, text=json.dumps(AGENT),
                                            name="bench.json")  # fmt: skip
        created = await LifecycleClient(nc, actor="bench", timeout_s=30).create_from(source)
        agent = created.agent.agent_id
        client = ContextClient(nc, timeout_s=60)
        passages = DATA["passages"]
        items = [context_pb2.ContextItem(kind=context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE, content=p["text"],
                                         source=p["id"]) for p in passages]  # fmt: skip
        own = [context_pb2.ContextItem(kind=context_pb2.MEMORY_KIND_LONG_TERM, content=p["text"], source=p["id"])
               for p in passages]  # fmt: skip
        for batch in (items, own):
            reply = await client.bulk_store(context_pb2.BulkStoreContextRequest(agent_id=agent, items=batch))
            assert reply.failed == 0, [r.error.message for r in reply.results if r.HasField("error")]
        questions = [q["q"] for q in DATA["questions"]]

        def query(i: int) -> str:
            return f"{questions[i % len(questions)]} ({i})"  # new text every time: embedded, not cached

        retrieve = await timed(retrievals, lambda i: client.retrieve(context_pb2.RetrieveContextRequest(
            agent_id=agent, query=query(i), kinds=[context_pb2.MEMORY_KIND_LONG_TERM], limit=5)))  # fmt: skip
        search = await timed(retrievals, lambda i: client.search(context_pb2.SearchKnowledgeRequest(
            agent_id=agent, query=query(i + retrievals), limit=5)))  # fmt: skip
        stages: dict[str, list[float]] = {}

        async def ask(i: int) -> None:
            answer = await client.ask(context_pb2.RagAskRequest(agent_id=agent, question=query(i + 2 * retrievals),
                                                                mode=context_pb2.ANSWER_MODE_EXTRACTIVE))  # fmt: skip
            assert answer.citations, answer
            for t in answer.timings:
                stages.setdefault(t.stage, []).append(t.elapsed.ToNanoseconds() / 1e9)

        asked = await timed(asks, ask)
        hits = firsts = 0
        for q in DATA["questions"]:
            found = await client.search(context_pb2.SearchKnowledgeRequest(agent_id=agent, query=q["q"], limit=5))
            hits += q["relevant"] in [i.source for i in found.items]
            firsts += bool(found.items) and found.items[0].source == q["relevant"]
        matrix = model.encode([p["text"] for p in passages])
        floor = []
        for i in range(retrievals):
            t0 = time.perf_counter()
            scores = matrix @ model.encode([query(i)])[0]
            np.argsort(-scores)[:5]
            floor.append(time.perf_counter() - t0)
        return {"retrieve": summary(retrieve), "search": summary(search), "ask": summary(asked),
                "stages_ms": {k: statistics.fmean(v) * 1e3 for k, v in stages.items()},
                "floor": summary(floor), "recall_at_5": hits / len(DATA["questions"]),
                "recall_at_1": firsts / len(DATA["questions"]),
                "keyword_recall_at_5": keyword_recall()}  # fmt: skip
    finally:
        await nc.close()
        for proc in procs.values():
            proc.stop(20)
        redis_server.stop(5)
        nats.stop(5)


def keyword_recall() -> float:
    """recall@5 of ranking passages by keyword coverage alone (the baseline for quality)."""
    hits = 0
    for q in DATA["questions"]:
        words = keywords(q["q"])
        ranked = sorted(DATA["passages"], key=lambda p: -rag.coverage(words, p["text"]))
        hits += q["relevant"] in [p["id"] for p in ranked[:5]]
    return hits / len(DATA["questions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (the smoke run)")
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000,40000", help="collection sizes, comma-separated")
    parser.add_argument("--searches", type=int, default=50, help="searches per collection size")
    parser.add_argument("--retrievals", type=int, default=200, help="retrieve/search requests through the service")
    parser.add_argument("--asks", type=int, default=100, help="RAG questions through the service")
    parser.add_argument("--embed-texts", type=int, default=512, help="chunk-sized texts embedded for throughput")
    parser.add_argument("--disk-points", type=int, default=1000, help="points upserted into on-disk local mode")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.searches, args.retrievals, args.asks, args.embed_texts, args.disk_points = (
            "200,400", 3, 5, 3, 16, 20)  # fmt: skip
    sizes = sorted(int(s) for s in args.sizes.split(","))
    model = MiniLM()
    emb = embeddings(model, args.embed_texts, args.searches * 2)
    with tempfile.TemporaryDirectory(prefix="symbi-bench-context-") as tmp:
        scaling = asyncio.run(search_scaling(sizes, args.searches, args.disk_points, Path(tmp)))
        live = asyncio.run(through_service(Path(tmp), model, args.retrievals, args.asks))
    report(emb, scaling, live)


def report(emb: dict[str, Any], scaling: dict[str, Any], live: dict[str, Any]) -> None:
    q = emb["query"]
    print(f"embeddings (all-MiniLM-L6-v2, numpy): {emb['texts_per_s']:,.0f} texts/s "
          f"({emb['tokens_per_s']:,.0f} tokens/s, {emb['mean_tokens']:.0f} tokens per text, batches of 32); "
          f"one query p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms")  # fmt: skip
    print("vector search, qdrant-client local mode, top 10 (ms):")
    print(
        f"  {'points':>8} {'p50':>8} {'p99':>8} {'filtered p50':>13} {'numpy p50':>10} {'x numpy':>8} {'upserts/s':>10}"
    )
    for s in scaling["sizes"]:
        ratio = s["search"]["p50_ms"] / s["numpy"]["p50_ms"]
        print(f"  {s['points']:>8,} {s['search']['p50_ms']:>8.2f} {s['search']['p99_ms']:>8.2f} "
              f"{s['filtered']['p50_ms']:>13.2f} {s['numpy']['p50_ms']:>10.3f} {ratio:>8.1f} "
              f"{s['upsert_per_s']:>10,.0f}")  # fmt: skip
    limit, filtered = scaling["too_slow_from"], scaling["filtered_too_slow_from"]
    for what, points in (("unfiltered", limit), ("filtered (own memory always filters by agent)", filtered)):
        print(f"  {what}: median passes {BUDGET_MS:.0f} ms from {points:,} points" if points
              else f"  {what}: median under {BUDGET_MS:.0f} ms at every size measured")  # fmt: skip
    print(f"  on-disk local mode upserts: {scaling['disk_upsert_per_s']:,.0f} points/s (one SQLite transaction each)")
    r, s, a, f = live["retrieve"], live["search"], live["ask"], live["floor"]
    print("through symbi serve context (NATS, policy decisions, lifecycle lookups cached):")
    print(f"  retrieve_context: mean {r['mean_ms']:.2f} ms, p50 {r['p50_ms']:.2f}, p99 {r['p99_ms']:.2f} "
          f"(in-process floor p50 {f['p50_ms']:.2f} ms; target mean < 50 ms)")  # fmt: skip
    print(f"  search_knowledge: mean {s['mean_ms']:.2f} ms, p50 {s['p50_ms']:.2f}, p99 {s['p99_ms']:.2f}")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in live["stages_ms"].items())
    print(f"  RAG ask, extractive: mean {a['mean_ms']:.2f} ms, p50 {a['p50_ms']:.2f}, p99 {a['p99_ms']:.2f} "
          f"(target < 500 ms); stages ms: {stages}")  # fmt: skip
    print(f"  recall@5 on {len(DATA['questions'])} labelled questions: {live['recall_at_5']:.3f} "
          f"(keyword overlap: {live['keyword_recall_at_5']:.3f}); recall@1 {live['recall_at_1']:.3f}")  # fmt: skip
    doc = {
        "benchmark": "context",
        "embed_texts_per_s": emb["texts_per_s"],
        "embed_query_p50_ms": q["p50_ms"],
        "search_by_size": {str(x["points"]): x["search"]["p50_ms"] for x in scaling["sizes"]},
        "local_mode_too_slow_from": limit,
        "local_mode_filtered_too_slow_from": filtered,
        "search_filtered_by_size": {str(x["points"]): x["filtered"]["p50_ms"] for x in scaling["sizes"]},
        "disk_upsert_per_s": scaling["disk_upsert_per_s"],
        "retrieve_mean_ms": r["mean_ms"],
        "retrieve_p50_ms": r["p50_ms"],
        "ask_mean_ms": a["mean_ms"],
        "ask_p50_ms": a["p50_ms"],
        "recall_at_5": live["recall_at_5"],
        "recall_at_1": live["recall_at_1"],
        "keyword_recall_at_5": live["keyword_recall_at_5"],
        "p50_ratio": r["p50_ms"] / f["p50_ms"],
        "throughput_ratio": f["p50_ms"] / r["p50_ms"],
    }
    print("BENCH " + json.dumps(doc, sort_keys=True))


if __name__ == "__main__":
    main()
