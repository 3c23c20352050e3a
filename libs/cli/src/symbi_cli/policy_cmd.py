"""``symbi policy``: validate, apply, list, show, delete, eval, explain and dry-run policies.

``validate`` works offline; every other command talks to the policy service over
gRPC: ``--addr``, else the running ``symbi up`` (its state file), else
``[policy].addr``. Requests for ``eval``, ``explain`` and ``dry-run`` are written in
the plain form of ``symbi_common.policy_client.request_from_dict`` as JSON or YAML
(a file, ``-`` for stdin, or inline text). ``eval`` exits 0 when the request is
allowed and 1 when it is denied, so scripts can branch on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict

from symbi_cli import subcommands
from symbi_cli.stack import running_value
from symbi_common.errors import InvalidArgumentError
from symbi_common.policy_client import PolicyClient, is_allowed, request_from_dict
from symbi_common.settings import Settings
from symbi_proto.v1 import policy_pb2

EXIT_OK, EXIT_DENIED = 0, 1


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "policy",
        "manage and test policies",
        "Validate policy files offline, or manage and query the running policy service. "
        "The policy format is described in docs/policy.md.",
    )
    parser.add_argument("--addr", help="policy service host:port (default: the running `symbi up`, else [policy].addr)")
    add("validate", "check policy files offline; print each problem as file:line:column", _validate).add_argument(
        "files", nargs="+", type=Path
    )
    add("apply", "register every policy in the files (unchanged ones are left alone)", _apply).add_argument(
        "files", nargs="+", type=Path
    )
    add("list", "list the policies in force", _list)
    show = add("show", "print one policy and its source", _show)
    show.add_argument("policy_id")
    show.add_argument("--version", type=int, default=0, help="a past version (default: current)")
    delete = add("delete", "remove a policy", _delete)
    delete.add_argument("policy_id")
    delete.add_argument("--reason", default="", help="recorded in the audit trail")
    for name, summary, handler in (
        ("eval", "decide one request (exit 0 allowed, 1 denied)", _eval),
        ("explain", "decide one request and show the trace of every rule considered", _explain),
    ):
        add(name, summary, handler).add_argument("request", help="request as JSON/YAML: a file, - for stdin, or text")
    dry = add("dry-run", "compare current decisions with those of candidate policies, enforcing nothing", _dry_run)
    dry.add_argument("requests", help="recorded requests: a JSON/YAML list or JSON lines (file or -)")
    dry.add_argument("--candidate", action="append", type=Path, default=[], help="candidate policy file (repeatable)")
    dry.add_argument("--remove", action="append", default=[], help="policy id to drop in the candidate set")
    dry.add_argument("--replace", action="store_true", help="start the candidate set empty")


def policy_addr(args: argparse.Namespace, settings: Settings) -> str:
    if args.addr:
        return str(args.addr)
    return running_value(args.state_dir or settings.runtime.state_dir, "policy_addr") or settings.policy.addr


def _with_client(args: argparse.Namespace, work: Callable[[PolicyClient], Awaitable[int]]) -> int:
    from symbi_cli.main import load

    settings = load(args)

    async def run() -> int:
        client = PolicyClient(
            policy_addr(args, settings), timeout_s=settings.policy.decision_timeout_s, cache_size=0, actor="cli"
        )
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(run())


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def _validate(args: argparse.Namespace) -> int:
    from symbi_policy.compiler import compile_sources
    from symbi_policy.document import DocumentError

    failed = False
    for path in args.files:
        try:
            compiled = compile_sources(path.read_text(encoding="utf-8"), str(path), _format(path))
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            failed = True
            continue
        except DocumentError as exc:
            for issue in exc.issues:
                print(str(issue), file=sys.stderr)
            failed = True
            continue
        for policy in compiled:
            for warning in policy.warnings:
                print(f"{warning} (warning)", file=sys.stderr)
        ids = ", ".join(f"{p.id} ({len(p.rules)} rules)" for p in compiled)
        print(f"ok {path}: {ids}")
    return 1 if failed else 0


def _format(path: Path) -> str:
    return "json" if path.suffix == ".json" else "yaml"


def _apply(args: argparse.Namespace) -> int:
    from symbi_policy.compiler import compile_sources

    documents: list[tuple[Path, str]] = []
    for path in args.files:
        for compiled in compile_sources(path.read_text(encoding="utf-8"), str(path), _format(path)):
            documents.append((path, compiled.policy.source.text))

    async def work(client: PolicyClient) -> int:
        for path, text in documents:
            reply = await client.register(text, name=path.name, fmt=_format(path))
            unchanged = any(issue.code == "unchanged" for issue in reply.issues)
            state = "unchanged" if unchanged else "applied"
            policy = f"{reply.policy.id} v{reply.policy.version}"
            print(f"{state} {policy} from {path.name} (policy set v{reply.policy_set_version})")
        return 0

    return _with_client(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(client: PolicyClient) -> int:
        policies = await client.list()
        rows: list[dict[str, Any]] = [
            {
                "id": p.id,
                "version": p.version,
                "priority": p.priority,
                "types": [policy_pb2.PolicyType.Name(t).removeprefix("POLICY_TYPE_").lower() for t in p.types],
                "rules": len(p.rules),
                "created_by": p.created_by,
            }
            for p in policies
        ]
        lines = [f"{'ID':<28} {'VER':>4} {'RULES':>5}  TYPES / CREATED BY"]
        lines += [
            f"{r['id']:<28} {r['version']:>4} {r['rules']:>5}  {','.join(r['types'])}  {r['created_by']}" for r in rows
        ]
        _emit(args, rows, "\n".join(lines))
        return 0

    return _with_client(args, work)


def _show(args: argparse.Namespace) -> int:
    async def work(client: PolicyClient) -> int:
        policy = await client.get(args.policy_id, args.version)
        header = f"# {policy.id} v{policy.version}, created by {policy.created_by}, sha256 {policy.source_sha256.hex()}"
        _emit(args, MessageToDict(policy, preserving_proto_field_name=True), f"{header}\n{policy.source.text}")
        return 0

    return _with_client(args, work)


def _delete(args: argparse.Namespace) -> int:
    async def work(client: PolicyClient) -> int:
        version = await client.delete(args.policy_id, reason=args.reason)
        print(f"deleted {args.policy_id} (policy set v{version})")
        return 0

    return _with_client(args, work)


def _read_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if len(source) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    return source


def _load_data(source: str) -> Any:
    text = _read_text(source)
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON lines
        except json.JSONDecodeError:
            raise InvalidArgumentError(f"cannot read the request(s): {exc}") from None


def _summary(decision: policy_pb2.PolicyDecision) -> str:
    outcome = decision.WhichOneof("outcome") or "deny"
    who = f"{decision.policy_id}/{decision.matched_rule} v{decision.policy_version}" if decision.policy_id else "-"
    line = (
        f"{outcome.upper()}  rule {who}  (policy set v{decision.policy_set_version}, decision {decision.decision_id})"
    )
    if decision.HasField("deny"):
        line += f"\n  reason: {decision.deny.reason} [{policy_pb2.DenyKind.Name(decision.deny.kind)}]"
    for condition in decision.allow_with_conditions.conditions:
        kind = str(condition.WhichOneof("kind"))
        body = MessageToDict(getattr(condition, kind), preserving_proto_field_name=True)
        line += f"\n  condition {kind} {json.dumps(body, sort_keys=True)}  ({condition.rule})"
    return line


def _eval(args: argparse.Namespace) -> int:
    req = request_from_dict(_mapping(_load_data(args.request)))

    async def work(client: PolicyClient) -> int:
        decision = await client.evaluate(req)
        _emit(args, MessageToDict(decision, preserving_proto_field_name=True), _summary(decision))
        return EXIT_OK if is_allowed(decision) else EXIT_DENIED

    return _with_client(args, work)


def _explain(args: argparse.Namespace) -> int:
    req = request_from_dict(_mapping(_load_data(args.request)))

    async def work(client: PolicyClient) -> int:
        reply = await client.explain(req)
        lines = [_summary(reply.decision), "trace:"]
        for step in reply.trace:
            mark = "MATCH" if step.matched else "  -  "
            effect = policy_pb2.RuleEffect.Name(step.effect).removeprefix("RULE_EFFECT_").lower()
            lines.append(f"  {mark} {step.policy_id}/{step.rule} v{step.policy_version} [{effect}] {step.detail}")
        _emit(args, MessageToDict(reply, preserving_proto_field_name=True), "\n".join(lines))
        return 0

    return _with_client(args, work)


def _dry_run(args: argparse.Namespace) -> int:
    data = _load_data(args.requests)
    items = data if isinstance(data, list) else [data]
    requests = [request_from_dict(_mapping(item)) for item in items]
    candidates = [
        policy_pb2.PolicySource(text=path.read_text(encoding="utf-8"), name=str(path), format=_format(path))
        for path in args.candidate
    ]

    async def work(client: PolicyClient) -> int:
        reply = await client.dry_run(requests, candidates, remove=args.remove, replace_current=args.replace)
        if reply.issues:
            for issue in reply.issues:
                loc = issue.location
                print(f"{loc.file}:{loc.line}:{loc.column}: {issue.message}", file=sys.stderr)
            return 1
        lines = [f"{reply.changed_count} of {len(reply.results)} decisions would change:"]
        for result in reply.results:
            if result.changed:
                before = result.current.WhichOneof("outcome") or "deny"
                after = result.candidate.WhichOneof("outcome") or "deny"
                lines.append(f"  #{result.index}: {before} -> {after}  {result.candidate.deny.reason}".rstrip())
        _emit(args, MessageToDict(reply, preserving_proto_field_name=True), "\n".join(lines))
        return 0

    return _with_client(args, work)


def _mapping(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"a request is a mapping, not {type(item).__name__}")
    return item
