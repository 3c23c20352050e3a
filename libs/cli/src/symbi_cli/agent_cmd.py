"""``symbi agent``: validate definitions, and create, list, show, suspend, resume, terminate agents.

``validate`` works offline (``.symbi``, ``.yaml``/``.yml``, ``.toml``, ``.json``) and
prints each problem as ``file:line:column: message``; it exits 1 if any file has an
error. Every other command talks to the lifecycle service over NATS
(``--nats-url``, else the running ``symbi up``, else ``[nats].url``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client

from symbi_cli import subcommands
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.scheduler_client import SchedulerClient
from symbi_proto.v1 import agent_pb2, common_pb2, task_pb2

EXIT_OK, EXIT_INVALID = 0, 1
PRIORITIES = {
    task_pb2.TaskPriority.Name(v).removeprefix("TASK_PRIORITY_").lower(): v for v in task_pb2.TaskPriority.values() if v
}
FINAL_TASK = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED,
              task_pb2.TASK_STATE_REJECTED)  # fmt: skip
STATE_NAMES = {
    agent_pb2.AgentState.Name(v).removeprefix("AGENT_STATE_").lower(): v for v in agent_pb2.AgentState.values() if v
}


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "agent",
        "define and manage agents",
        "Check agent definitions offline, or create and manage agents through the lifecycle service. "
        "The definition formats are described in docs/agents.md.",
    )
    parser.add_argument("--nats-url", help="NATS of the lifecycle service (default: the running `symbi up`)")
    parser.add_argument("--as", dest="actor", default="cli", help="who asks (recorded and checked by policy)")
    parser.add_argument("--role", action="append", default=[], help="a role of who asks (repeatable), for policy")
    add("validate", "check definition files offline; print each problem as file:line:column", _validate).add_argument(
        "files", nargs="+", type=Path
    )
    create = add("create", "create an agent from a definition file (it is validated first)", _create)
    create.add_argument("file", type=Path)
    create.add_argument("--idempotency-key", default="", help="repeat a create safely: the same key, the same agent")
    listing = add("list", "list agents", _list)
    listing.add_argument("--state", choices=sorted(STATE_NAMES), action="append", default=[])
    listing.add_argument("--tenant", default="")
    listing.add_argument("--name-prefix", default="")
    show = add("show", "print one agent's record", _show)
    show.add_argument("agent_id")
    show.add_argument("--history", action="store_true", help="also print every state transition")
    show.add_argument("--dsl", action="store_true", help="print the definition as Symbi DSL")
    run = add("run", "give an agent a task (the scheduler queues it by priority)", _run)
    run.add_argument("agent_id")
    run.add_argument("--priority", choices=sorted(PRIORITIES), default=None)
    run.add_argument("--wait", action="store_true", help="wait until the task ends; exit 1 unless it succeeded")
    run.add_argument("--timeout", type=float, default=600, help="seconds to wait with --wait")
    for name, summary, handler in (
        ("suspend", "suspend an agent (its task is stopped and held)", _suspend),
        ("resume", "resume a suspended agent (its held task runs again)", _resume),
    ):
        cmd = add(name, summary, handler)
        cmd.add_argument("agent_id")
        cmd.add_argument("--reason", default="")
    terminate = add("terminate", "terminate an agent; returns once its task is confirmed stopped", _terminate)
    terminate.add_argument("agent_id")
    terminate.add_argument("--reason", default="")
    terminate.add_argument("--grace", type=float, default=0, help="seconds between SIGTERM and SIGKILL")


def print_issues(issues: Iterable[common_pb2.ValidationIssue], out: Any = sys.stdout) -> None:
    for problem in issues:
        where = problem.location
        place = f"{where.file}:{where.line}:{where.column}" if where.line else where.file
        severity = "error" if problem.severity == common_pb2.ISSUE_SEVERITY_ERROR else "warning"
        print(f"{place}: {severity}: {problem.message} [{problem.code}]", file=out)


def _validate(args: argparse.Namespace) -> int:
    from symbi_lifecycle.definitions import load, source_of

    failed = 0
    summary = []
    for path in args.files:
        try:
            built = load(source_of(path))
        except (OSError, ValueError) as exc:
            print(f"{path}: error: {exc}")
            failed += 1
            continue
        print_issues(built.issues)
        if not built.ok:
            failed += 1
        summary.append({"file": str(path), "ok": built.ok, "agent": built.definition.metadata.name})
        if not args.json and built.ok:
            d = built.definition
            print(f"{path}: ok: agent {d.metadata.name} ({len(d.capabilities)} capabilities, "
                  f"{sum(len(p.statements) for p in d.policies)} policy statements)")  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    return EXIT_INVALID if failed else EXIT_OK


def _client(nc: Client, args: argparse.Namespace) -> LifecycleClient:
    return LifecycleClient(nc, timeout_s=10.0, actor=args.actor, roles=tuple(args.role))


def _show_record(record: agent_pb2.AgentRecord, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(MessageToDict(record, preserving_proto_field_name=True), indent=2))
        return
    d = record.definition
    state = agent_pb2.AgentState.Name(record.state).removeprefix("AGENT_STATE_").lower()
    print(f"{record.agent_id}  {d.metadata.name} {d.metadata.version}  {state}  (revision {record.revision})")
    if record.state_reason:
        print(f"  reason: {record.state_reason}")
    if d.tenant:
        print(f"  tenant: {d.tenant}")
    if record.current_task_id:
        print(f"  task: {record.current_task_id}")
    if d.capabilities:
        print(f"  capabilities: {', '.join(d.capabilities)}")
    print(f"  key: {record.identity.key_id}")


def _create(args: argparse.Namespace) -> int:
    from symbi_lifecycle.definitions import source_of

    try:
        source = source_of(args.file)
    except (OSError, ValueError) as exc:
        print(f"{args.file}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID

    async def work(nc: Client) -> int:
        reply = await _client(nc, args).create_from(source, idempotency_key=args.idempotency_key)
        print_issues(reply.issues, sys.stderr)
        if not reply.HasField("agent"):
            return EXIT_INVALID
        _show_record(reply.agent, args)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        client = _client(nc, args)
        token, rows = "", list[agent_pb2.AgentRecord]()
        while True:
            request = agent_pb2.ListAgentsRequest(
                states=[STATE_NAMES[s] for s in args.state],
                tenant=args.tenant,
                name_prefix=args.name_prefix,
                omit_definitions=True,
            )
            request.page.page_size, request.page.page_token = 500, token
            page = await client.list(request)
            rows.extend(page.agents)
            token = page.page.next_page_token
            if not token:
                break
        if args.json:
            print(json.dumps([MessageToDict(r, preserving_proto_field_name=True) for r in rows], indent=2))
            return EXIT_OK
        for r in rows:
            state = agent_pb2.AgentState.Name(r.state).removeprefix("AGENT_STATE_").lower()
            print(f"{r.agent_id}  {state:<12} {r.definition.tenant or '-':<12} {r.definition.metadata.name}")
        print(f"{len(rows)} agents")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        client = _client(nc, args)
        record = await client.get(args.agent_id)
        if args.dsl:
            from symbi_lifecycle.definitions.render import render

            print(render(record.definition), end="")
            return EXIT_OK
        _show_record(record, args)
        if args.history:
            for t in await client.history(args.agent_id):
                frm = agent_pb2.AgentState.Name(t.from_state).removeprefix("AGENT_STATE_").lower()
                to = agent_pb2.AgentState.Name(t.to_state).removeprefix("AGENT_STATE_").lower()
                print(f"  {t.revision:>4} {t.time.ToJsonString()}  {frm} -> {to}  {t.reason}  ({t.actor})")
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _run(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        scheduler = SchedulerClient(nc, timeout_s=30, actor=args.actor)
        priority = PRIORITIES[args.priority] if args.priority else 0
        reply = await scheduler.schedule(args.agent_id, priority=priority)
        state = task_pb2.TaskState.Name(reply.state).removeprefix("TASK_STATE_").lower()
        if not args.wait:
            if args.json:
                print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True)))
            else:
                print(f"task {reply.task_id} {state} (position {reply.queue_position})")
            return EXIT_OK
        deadline = asyncio.get_running_loop().time() + args.timeout
        status = await scheduler.get_task(reply.task_id)
        while status.state not in FINAL_TASK:
            if asyncio.get_running_loop().time() > deadline:
                print(f"task {reply.task_id} still {state} after {args.timeout:g}s", file=sys.stderr)
                return EXIT_INVALID
            await asyncio.sleep(0.2)
            status = await scheduler.get_task(reply.task_id)
            state = task_pb2.TaskState.Name(status.state).removeprefix("TASK_STATE_").lower()
        if args.json:
            print(json.dumps(MessageToDict(status, preserving_proto_field_name=True), indent=2))
        else:
            print(f"task {reply.task_id} {state} on {status.report.node or '-'}: {status.reason}")
        return EXIT_OK if status.state == task_pb2.TASK_STATE_SUCCEEDED else EXIT_INVALID

    return subcommands.with_nats(args, work)


def _suspend(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        _show_record((await _client(nc, args).suspend(args.agent_id, args.reason)).agent, args)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _resume(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        _show_record((await _client(nc, args).resume(args.agent_id, args.reason)).agent, args)
        return EXIT_OK

    return subcommands.with_nats(args, work)


def _terminate(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        reply = await _client(nc, args).terminate(args.agent_id, reason=args.reason, grace_s=args.grace, timeout_s=120)
        _show_record(reply.agent, args)
        if not reply.task_stopped:
            print(f"not terminated: the task's stop was not confirmed ({reply.detail}); try again", file=sys.stderr)
            return EXIT_INVALID
        return EXIT_OK

    return subcommands.with_nats(args, work)
