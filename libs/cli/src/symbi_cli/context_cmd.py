"""``symbi context``: ingest documents, search knowledge, ask questions, store and delete memory.

Every action speaks for one agent (``--agent``): the context service looks it up in
the lifecycle service and asks the policy service whether it may read or write, so
the answers are what that agent would get. Talks to the context service over NATS
(``--nats-url``, else the running ``symbi up``, else ``[nats].url``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client

from symbi_cli import subcommands
from symbi_common.context_client import ContextClient
from symbi_common.errors import SymbiError
from symbi_proto.v1 import common_pb2, context_pb2

EXIT_OK, EXIT_FAILED = 0, 1
KINDS = {
    "short-term": context_pb2.MEMORY_KIND_SHORT_TERM,
    "long-term": context_pb2.MEMORY_KIND_LONG_TERM,
    "working": context_pb2.MEMORY_KIND_WORKING,
    "shared": context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE,
}
MODES = {"auto": context_pb2.ANSWER_MODE_AUTO, "extractive": context_pb2.ANSWER_MODE_EXTRACTIVE,
         "generative": context_pb2.ANSWER_MODE_GENERATIVE}  # fmt: skip
SENSITIVITY = {"public": common_pb2.DATA_SENSITIVITY_PUBLIC, "internal": common_pb2.DATA_SENSITIVITY_INTERNAL,
               "confidential": common_pb2.DATA_SENSITIVITY_CONFIDENTIAL,
               "restricted": common_pb2.DATA_SENSITIVITY_RESTRICTED}  # fmt: skip


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "context",
        "agent memory, shared knowledge and questions over it",
        "Ingest documents, search shared knowledge, ask questions (answers cite their sources), and store or "
        "delete an agent's memory. Every action speaks for the agent given with --agent, under its policies. "
        "See docs/context.md.",
    )
    parser.add_argument("--nats-url", help="NATS of the context service (default: the running `symbi up`)")
    parser.add_argument("--agent", required=True, help="id of the agent to act as (see `symbi agent list`)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each request")

    ingest = add("ingest", "ingest documents (.md, .txt, .pdf): chunk, embed and store them", _ingest)
    ingest.add_argument("files", nargs="+", type=Path)
    ingest.add_argument("--private", action="store_true", help="into the agent's long-term memory, not shared")
    ingest.add_argument("--label", action="append", default=[], help="data classification label (repeatable)")
    ingest.add_argument("--sensitivity", choices=sorted(SENSITIVITY), default=None)
    ingest.add_argument("--chunk-size", type=int, default=0, help="characters per chunk (default 800)")
    ingest.add_argument("--overlap", type=int, default=0, help="characters repeated between chunks (default 100)")
    ingest.add_argument("--media-type", default="", help="text/plain, text/markdown or application/pdf")

    for name, summary, handler in (
        ("search", "search the shared knowledge the agent may read", _search),
        ("retrieve", "search the agent's own memory", _retrieve),
    ):
        cmd = add(name, summary, handler)
        cmd.add_argument("query")
        cmd.add_argument("--limit", type=int, default=5)
        cmd.add_argument("--label", action="append", default=[], help="only items with one of these labels")
        cmd.add_argument("--source", default="", help="only items from this source")
        if name == "retrieve":
            cmd.add_argument("--kind", choices=sorted(KINDS), action="append", default=[])

    ask = add("ask", "ask a question; the answer quotes and cites the passages it comes from", _ask)
    ask.add_argument("question")
    ask.add_argument("--mode", choices=sorted(MODES), default="auto")
    ask.add_argument("--top-k", type=int, default=0, help="passages to retrieve (default 8)")
    ask.add_argument("--kind", choices=sorted(KINDS), action="append", default=[],
                     help="memory to search (default: long-term and shared)")  # fmt: skip

    store = add("store", "store one piece of memory", _store)
    store.add_argument("text")
    store.add_argument("--kind", choices=sorted(KINDS), default="long-term")
    store.add_argument("--task", default="", help="task id (working memory)")
    store.add_argument("--ttl", type=float, default=0, help="seconds to keep it (short-term; default from config)")
    store.add_argument("--label", action="append", default=[])
    store.add_argument("--source", default="cli")

    delete = add("delete", "delete memory by id, or by kind and source", _delete)
    delete.add_argument("ids", nargs="*")
    delete.add_argument("--kind", choices=sorted(KINDS), default=None)
    delete.add_argument("--source", default="")


def _client(nc: Client, args: argparse.Namespace) -> ContextClient:
    return ContextClient(nc, timeout_s=args.timeout)


def _dump(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _ingest(args: argparse.Namespace) -> int:
    kind = context_pb2.MEMORY_KIND_LONG_TERM if args.private else context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE

    async def work(nc: Client) -> int:
        client, failed, results = _client(nc, args), 0, []
        for number, path in enumerate(args.files, start=1):
            print(f"[{number}/{len(args.files)}] {path} ...", end=" ", file=sys.stderr, flush=True)
            try:
                request = context_pb2.IngestDocumentRequest(
                    agent_id=args.agent, kind=kind, source=path.name, media_type=args.media_type,
                    content=path.read_bytes(), labels=args.label,
                    sensitivity=SENSITIVITY.get(args.sensitivity or "", common_pb2.DATA_SENSITIVITY_UNSPECIFIED),
                    chunking=context_pb2.ChunkingOptions(chunk_size=args.chunk_size, overlap=args.overlap),
                )  # fmt: skip
                reply = await client.ingest(request)
            except (OSError, SymbiError) as exc:
                failed += 1
                print(f"failed: {exc}", file=sys.stderr)
                continue
            print(f"{reply.chunks} chunks, document {reply.document_id}", file=sys.stderr)
            results.append({"file": str(path), "document_id": reply.document_id, "chunks": reply.chunks})
        if args.json:
            print(json.dumps(results, indent=2))
        return EXIT_FAILED if failed else EXIT_OK

    return subcommands.with_nats(args, work)


def _filter(args: argparse.Namespace) -> context_pb2.ContextFilter:
    return context_pb2.ContextFilter(labels_any=args.label, source=args.source)


def _print_items(reply: context_pb2.ContextSearchResponse, args: argparse.Namespace) -> None:
    if args.json:
        _dump(reply)
        return
    for item in reply.items:
        where = item.source + (f" #{item.chunk_index}" if item.document_id else "")
        text = " ".join(item.content.split())
        print(f"{item.score:.3f}  {where or '-'}  {item.context_id}\n       {text[:200]}")
    withheld = f"; {reply.withheld} withheld by policy" if reply.withheld else ""
    print(f"{len(reply.items)} items ({reply.embedding_model}, {reply.elapsed.ToMilliseconds()} ms{withheld})")


def _search(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        request = context_pb2.SearchKnowledgeRequest(agent_id=args.agent, query=args.query, limit=args.limit,
                                                     filter=_filter(args))  # fmt: skip
        _print_items(await _client(nc, args).search(request), args)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _retrieve(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        kinds = [KINDS[k] for k in args.kind]
        request = context_pb2.RetrieveContextRequest(agent_id=args.agent, query=args.query, limit=args.limit,
                                                     kinds=kinds, filter=_filter(args))  # fmt: skip
        _print_items(await _client(nc, args).retrieve(request), args)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _ask(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        request = context_pb2.RagAskRequest(agent_id=args.agent, question=args.question, mode=MODES[args.mode],
                                            top_k=args.top_k, kinds=[KINDS[k] for k in args.kind])  # fmt: skip
        answer = await _client(nc, args).ask(request)
        if args.json:
            _dump(answer)
            return EXIT_OK
        print(answer.answer)
        for citation in answer.citations:
            print(f"  [{citation.index}] {citation.source or '-'} ({citation.context_id}, score {citation.score:.3f})")
        mode = context_pb2.AnswerMode.Name(answer.mode).removeprefix("ANSWER_MODE_").lower()
        stages = ", ".join(f"{t.stage} {t.elapsed.ToMicroseconds() / 1000:.1f}" for t in answer.timings)
        print(f"({mode}{' by ' + answer.model if answer.model else ''}; ms: {stages})", file=sys.stderr)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _store(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        item = context_pb2.ContextItem(kind=KINDS[args.kind], content=args.text, task_id=args.task,
                                       labels=args.label, source=args.source)  # fmt: skip
        request = context_pb2.StoreContextRequest(agent_id=args.agent, item=item)
        if args.ttl:
            request.ttl.FromNanoseconds(int(args.ttl * 1e9))
        print(await _client(nc, args).store(request))
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _delete(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        request = context_pb2.DeleteContextRequest(agent_id=args.agent, context_ids=args.ids,
                                                   kind=KINDS.get(args.kind or "", context_pb2.MEMORY_KIND_UNSPECIFIED),
                                                   filter=context_pb2.ContextFilter(source=args.source))  # fmt: skip
        print(f"{await _client(nc, args).delete(request)} deleted")
        return EXIT_OK

    return subcommands.with_nats(args, work)
