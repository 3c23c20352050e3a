"""``symbi bus``: the message bus from the command line.

Operators: ``stats`` (router counters by reason), ``dead-letters`` (what could not be
delivered, and why), ``credentials`` (hand an agent's runtime its bus credentials, as a
0600 JSON file). Acting as an agent (the CLI fetches the agent's credentials with the
stack's service credentials, then connects as the agent's own broker user, so every
send is decided by policy and audited like any other): ``send``, ``publish``,
``request``, ``listen`` (direct messages; ``--topic`` for topics), ``serve`` (answer
requests with an echo, for trying request-reply).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client

from symbi_cli import subcommands
from symbi_cli.stack import nats_settings_for
from symbi_common import deadletters, natsio, subjects
from symbi_common.bus.client import AgentBus
from symbi_common.envelope import Opened
from symbi_common.errors import SymbiError
from symbi_common.settings import Settings
from symbi_proto.v1 import common_pb2, message_pb2

M = message_pb2


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "bus",
        "the message bus: stats, dead letters, credentials; send and receive as an agent",
        "Inspect the message bus, hand out agent credentials, or send and receive messages as an agent "
        "(every message is decided by policy, rate limited and audited by the router). See docs/messaging.md.",
    )
    parser.add_argument("--nats-url", help="NATS of the stack (default: the running `symbi up`)")
    add("stats", "messages routed, refused (by reason) and dead-lettered", _stats)
    letters = add("dead-letters", "messages that could not be delivered, newest last", _dead_letters)
    letters.add_argument("--limit", type=int, default=50)
    creds = add("credentials", "issue an agent's bus credentials (secret!) for its runtime", _credentials)
    creds.add_argument("agent_id")
    creds.add_argument("--topic", action="append", default=[], help="a topic to subscribe to (repeatable)")
    creds.add_argument("--out", type=Path, required=True, help="file to write (mode 0600)")
    for name, summary in (("send", "send a direct message as an agent"), ("request", "ask an agent and wait")):
        cmd = add(name, summary, _send if name == "send" else _request)
        cmd.add_argument("--from", dest="sender", required=True, help="the sending agent's id")
        cmd.add_argument("to", help="the receiving agent's id")
        cmd.add_argument("text", help="the payload (UTF-8 text)")
        cmd.add_argument("--timeout", type=float, default=10.0)
    publish = add("publish", "publish to a topic as an agent", _publish)
    publish.add_argument("--from", dest="sender", required=True)
    publish.add_argument("topic")
    publish.add_argument("text")
    listen = add("listen", "print an agent's direct messages (or a topic's) as they arrive", _listen)
    listen.add_argument("agent_id")
    listen.add_argument("--topic", default="", help="listen to this topic instead of the inbox")
    listen.add_argument("--count", type=int, default=0, help="stop after this many messages (0: until Ctrl-C)")
    listen.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds (0: never)")
    serve = add("serve", "answer an agent's requests with an echo until Ctrl-C", _serve)
    serve.add_argument("agent_id")
    serve.add_argument("--count", type=int, default=0)


def _settings(args: argparse.Namespace) -> Settings:
    from symbi_cli.main import load

    return load(args)


async def _credentials_of(nc: Client, agent_id: str, topics: list[str]) -> M.BusCredentials:
    request = M.BusCredentialsRequest(agent_id=agent_id, topics=topics, requested_by="symbi-cli")
    return await natsio.request(nc, subjects.BUS_CREDENTIALS, request, M.BusCredentials, timeout=10)


async def _as_agent(nc: Client, args: argparse.Namespace, agent_id: str, topics: list[str]) -> AgentBus:
    """Connect as the agent's own broker user (its credentials fetched with the stack's)."""
    settings = _settings(args)
    creds = await _credentials_of(nc, agent_id, topics)
    nats_settings = nats_settings_for(settings, args.state_dir, args.nats_url or "", connect_timeout_s=5.0)
    return await AgentBus.connect(nats_settings, creds, settings.messaging)


def _print_result(args: argparse.Namespace, result: M.SendResult) -> int:
    if args.json:
        print(json.dumps(MessageToDict(result, preserving_proto_field_name=True), indent=2))
    elif result.status == M.DELIVERY_STATUS_REJECTED:
        print(f"refused: {M.MessageRejectReason.Name(result.reason)}: {result.detail}", file=sys.stderr)
    else:
        print(f"{M.DeliveryStatus.Name(result.status).removeprefix('DELIVERY_STATUS_').lower()} {result.message_id}")
    return 0 if result.status != M.DELIVERY_STATUS_REJECTED else 1


def _print_message(args: argparse.Namespace, opened: Opened) -> None:
    header = opened.header
    text = opened.plaintext.decode("utf-8", "replace")
    if args.json:
        print(json.dumps({"message_id": header.message_id, "sender": header.sender, "topic": header.topic,
                          "content_type": header.content_type, "text": text}), flush=True)  # fmt: skip
    else:
        where = f" on {header.topic}" if header.topic else ""
        print(f"{header.sender}{where}: {text}", flush=True)


def _stats(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        stats = await natsio.request(nc, subjects.BUS_STATS, M.BusStatsRequest(), M.MessagingStats, timeout=5)
        if args.json:
            print(json.dumps(MessageToDict(stats, preserving_proto_field_name=True), indent=2))
            return 0
        print(f"routed {stats.sent}  refused {stats.rejected}  dead letters {stats.dead_letters}")
        for reason, count in sorted(stats.rejected_by_reason.items()):
            print(f"  {reason:<28}{count:>8}")
        return 0

    return subcommands.with_nats(args, work)


def _dead_letters(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        stored = natsio.stream_messages(nc.jetstream(timeout=5), deadletters.STREAM, subjects.MESSAGE_DEAD_LETTER)
        letters = [common_pb2.DeadLetter.FromString(raw.data or b"") async for raw in stored]
        for letter in letters[-args.limit :]:
            if args.json:
                doc = MessageToDict(letter, preserving_proto_field_name=True)
                doc.pop("payload", None)
                print(json.dumps(doc))
            else:
                when = letter.time.ToDatetime().isoformat(timespec="seconds")
                print(f"{when}  {letter.subject}  {letter.error.code}: {letter.error.message} ({letter.attempts}x)")
        if not letters and not args.json:
            print("no dead letters")
        return 0

    return subcommands.with_nats(args, work)


def _credentials(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        creds = await _credentials_of(nc, args.agent_id, args.topic)
        doc = MessageToDict(creds, preserving_proto_field_name=True)
        from symbi_common.natsauth import write_creds

        write_creds(args.out, json.dumps(doc, indent=2))
        for refusal in creds.refused_topics:
            print(f"topic {refusal.topic} refused: {refusal.reason}", file=sys.stderr)
        print(f"credentials of {args.agent_id} written to {args.out} (keep them secret)")
        return 0

    return subcommands.with_nats(args, work)


def _send(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        bus = await _as_agent(nc, args, args.sender, [])
        try:
            bus.request_timeout_s = args.timeout
            return _print_result(args, await bus.send(args.to, args.text.encode(), content_type="text/plain"))
        finally:
            await bus.close()

    return subcommands.with_nats(args, work)


def _publish(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        bus = await _as_agent(nc, args, args.sender, [args.topic])
        try:
            return _print_result(args, await bus.publish(args.topic, args.text.encode(), content_type="text/plain"))
        finally:
            await bus.close()

    return subcommands.with_nats(args, work)


def _request(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        bus = await _as_agent(nc, args, args.sender, [])
        try:
            reply = await bus.request(args.to, args.text.encode(), timeout=args.timeout, content_type="text/plain")
        except SymbiError as exc:
            print(f"symbi bus request: {exc}", file=sys.stderr)
            return 1
        finally:
            await bus.close()
        _print_message(args, reply)
        return 0

    return subcommands.with_nats(args, work)


def _listen(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        bus = await _as_agent(nc, args, args.agent_id, [args.topic] if args.topic else [])
        done = asyncio.Event()
        seen = 0

        async def show(opened: Opened) -> None:
            nonlocal seen
            _print_message(args, opened)
            seen += 1
            if args.count and seen >= args.count:
                done.set()

        try:
            if args.topic:
                await bus.subscribe(args.topic, show)
            else:
                await bus.consume(show)
            if not args.json:
                print(f"listening as {args.agent_id}{' on ' + args.topic if args.topic else ''} ...", flush=True)
            await _wait(done, args.timeout)
        finally:
            await bus.close()
        return 0

    return subcommands.with_nats(args, work)


def _serve(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        bus = await _as_agent(nc, args, args.agent_id, [])
        done = asyncio.Event()
        answered = 0

        async def echo(opened: Opened) -> bytes:
            nonlocal answered
            _print_message(args, opened)
            answered += 1
            if args.count and answered >= args.count:
                asyncio.get_running_loop().call_later(0.5, done.set)  # let the reply go out first
            return opened.plaintext

        try:
            await bus.serve_requests(echo)
            print(f"answering requests to {args.agent_id} ...", flush=True)
            await _wait(done, 0)
        finally:
            await bus.close()
        return 0

    return subcommands.with_nats(args, work)


async def _wait(done: asyncio.Event, timeout_s: float) -> None:
    started = time.monotonic()
    while not done.is_set():
        if timeout_s and time.monotonic() - started >= timeout_s:
            return
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except TimeoutError:
            continue
