"""``symbi audit``: verify an exported log offline, and query, prove, report and rotate keys online.

Offline (files only): ``verify`` and ``export``. Online, over NATS to the audit
service (``--nats-url``, else the running ``symbi up``, else ``[nats].url``):
``query``, ``tail``, ``checkpoint``, ``proof``, ``keys``, ``report``, ``rotate-key``.
``verify`` exits 0 when the log is intact and 1 with the first failure (its kind,
the index of the first bad event where it can be located, and why).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict, Parse
from google.protobuf.message import Message
from nats.aio.client import Client

from symbi_cli import subcommands
from symbi_common import natsio, subjects
from symbi_common.errors import InvalidArgumentError
from symbi_proto.v1 import audit_pb2, common_pb2

FORMATS = {
    "json": audit_pb2.REPORT_FORMAT_JSON,
    "md": audit_pb2.REPORT_FORMAT_MARKDOWN,
    "html": audit_pb2.REPORT_FORMAT_HTML,
}


def register(commands: Any) -> None:
    parser, add = subcommands.group(
        commands,
        "audit",
        "verify, query and prove the audit trail",
        "Verify an exported audit log offline with nothing but its files and a public key, "
        "or query the running audit service: events, proofs, checkpoints, keys, compliance reports.",
    )
    parser.add_argument("--nats-url", help="NATS of the audit service (default: the running `symbi up`)")

    verify = add("verify", "verify a log directory offline; exit 1 naming the first bad event", _verify)
    verify.add_argument("directory", type=Path, help="an exported log (or the storage directory itself)")
    verify.add_argument(
        "--public-key", type=Path, required=True, help="the trusted key: PEM or `symbi audit keys` JSON"
    )
    verify.add_argument("--signatures", action="store_true", help="also check every event's signature (slower)")
    witness_help = "a checkpoint saved earlier (`symbi audit checkpoint --save`); the log must extend it"
    verify.add_argument("--witness", type=Path, action="append", default=[], help=witness_help)
    verify.add_argument(
        "--prove",
        metavar="EVENT_ID",
        action="append",
        default=[],
        help="also prove this event is in the verified log under its last signed checkpoint (repeatable)",
    )
    verify.add_argument("--prove-file", type=Path, help="a file of event ids to prove, one per line")
    export = add("export", "copy a log's public files (no private keys) into a directory for auditors", _export)
    export.add_argument("out", type=Path)
    export.add_argument("--storage", type=Path, help="the audit storage directory (default: [security].audit_storage)")

    query = add("query", "list events", _query)
    query.add_argument("--agent", default="")
    query.add_argument("--type", action="append", default=[], help="event type, or prefix.* (repeatable)")
    query.add_argument("--since", help="ISO time, inclusive")
    query.add_argument("--until", help="ISO time, exclusive")
    query.add_argument("--correlation", default="")
    query.add_argument("--limit", type=int, default=50)
    query.add_argument("--newest-first", action="store_true")
    add("tail", "print events as they are appended (Ctrl-C to stop)", _tail)
    checkpoint = add("checkpoint", "print the latest signed checkpoint", _checkpoint)
    checkpoint.add_argument("--save", type=Path, help="write it to this file (a witness copy for `verify`)")
    proof = add("proof", "prove that one event is in the log, and check the proof here", _proof)
    proof.add_argument("event_id")
    keys = add("keys", "print the log's public keys", _keys)
    keys.add_argument("--save", type=Path, help="write the key document to this file")
    report = add("report", "build a compliance report (hipaa, gdpr, sox, or a definition file)", _report)
    report.add_argument("framework", help="hipaa, gdpr, sox, or a name for --definition")
    report.add_argument("--definition", type=Path, help="a report definition (YAML)")
    report.add_argument("--format", choices=sorted(FORMATS), default="md")
    report.add_argument("--since")
    report.add_argument("--until")
    report.add_argument("--out", type=Path, help="write the document here instead of printing it")
    rotate = add("rotate-key", "replace the log's signing key (recorded in the log)", _rotate)
    rotate.add_argument("--reason", default="")


# Offline ----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from symbi_audit.keys import load_trusted_keys
    from symbi_audit.verify import verify_directory

    if not (args.directory / "log").is_dir():
        raise InvalidArgumentError(f"{args.directory} holds no audit log (no log/ directory)")
    trusted = load_trusted_keys(args.public_key)
    witness = [_read_checkpoint(path) for path in args.witness]
    started = dt.datetime.now(dt.UTC)
    result = verify_directory(args.directory, trusted, check_event_signatures=args.signatures, witness=witness)
    wanted = list(args.prove)
    if args.prove_file is not None:
        wanted += [line.strip() for line in args.prove_file.read_text().splitlines() if line.strip()]
    proofs_ok = _prove(args, result, wanted) if result.ok and wanted else not wanted
    if args.json:
        print(json.dumps(MessageToDict(result, preserving_proto_field_name=True), indent=2))
    elif result.ok:
        seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
        print(
            f"ok: {result.events_checked} events, {result.checkpoints_checked} checkpoints verified "
            f"(root {result.checkpoint.root_hash.hex()[:16]}..., {seconds:.2f}s)"
        )
    else:
        kind = audit_pb2.VerificationFailureKind.Name(result.failure.kind).removeprefix("VERIFICATION_FAILURE_KIND_")
        where = f"event {result.failure.sequence}" if result.failure.HasField("sequence") else "the log"
        print(f"FAILED at {where}: {kind.lower()}: {result.failure.detail}", file=sys.stderr)
        print(f"({result.events_checked} events verified before it)", file=sys.stderr)
    return 0 if result.ok and proofs_ok else 1


def _prove(args: argparse.Namespace, result: audit_pb2.VerifyResponse, event_ids: list[str]) -> bool:
    """Print an inclusion proof of each event under the log's last verified checkpoint."""
    from symbi_audit.verify import prove_inclusion

    proofs = prove_inclusion(args.directory, event_ids, result.checkpoint)
    ok = True
    for event_id, proof in proofs.items():
        if proof is None or not proof.proven:
            ok = False
            why = "not in the log under its last checkpoint" if proof is None else "the proof does not verify"
            print(f"NOT PROVEN {event_id}: {why}", file=sys.stderr)
        elif not args.json:
            print(f"proven {event_id} ({proof.event.event_type}): leaf {proof.leaf_index} of {proof.tree_size}, "
                  f"{len(proof.path)} hashes to root {result.checkpoint.root_hash.hex()[:16]}...")  # fmt: skip
    return ok


def _read_checkpoint(path: Path) -> audit_pb2.Checkpoint:
    try:
        return Parse(path.read_text(), audit_pb2.Checkpoint())
    except Exception as exc:
        raise InvalidArgumentError(f"{path} is not a saved checkpoint: {exc}") from None


def _export(args: argparse.Namespace) -> int:
    from symbi_audit.keys import KeyRing, public_keys_document
    from symbi_cli.main import load

    storage = args.storage or load(args).audit_storage
    if not (storage / "log").is_dir():
        raise InvalidArgumentError(f"{storage} holds no audit log")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(storage / "log", out / "log", dirs_exist_ok=True)
    for name in ("checkpoints.log", "log.json"):
        if (storage / name).exists():
            shutil.copy2(storage / name, out / name)
    keys = KeyRing.open(storage / "keys", create=False)
    log_id = json.loads((storage / "log.json").read_text())["log_id"]
    document = public_keys_document([key.message() for key in keys.keys], log_id)
    (out / "public-keys.json").write_text(json.dumps(document, indent=2))
    segments = len(list((out / "log").glob("*.seg")))
    print(f"exported {segments} segments to {out} (verify with: symbi audit verify {out} --public-key KEY)")
    return 0


# Online -----------------------------------------------------------------------------


_with_nats = subcommands.with_nats


async def _ask(nc: Client, subject: str, message: Message, reply: type[Message]) -> Any:
    return await natsio.request(nc, subject, message, reply, timeout=30)


def _time(text: str | None, target: Any) -> None:
    if text:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgumentError(f"{text!r} is not an ISO time (e.g. 2026-12-01T00:00:00+00:00)") from None
        target.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))


def _line(event: audit_pb2.AuditEvent) -> str:
    when = dt.datetime.fromtimestamp(event.timestamp.seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    outcome = audit_pb2.AuditOutcome.Name(event.outcome).removeprefix("AUDIT_OUTCOME_").lower()
    return (
        f"{event.sequence:>8} {when} {event.event_type:<24} {outcome:<11} {event.agent_id or '-':<24} {event.event_id}"
    )


def _query(args: argparse.Namespace) -> int:
    request = audit_pb2.AuditQueryRequest(
        agent_id=args.agent, event_types=args.type, correlation_id=args.correlation, descending=args.newest_first,
        page=common_pb2.PageRequest(page_size=args.limit),
    )  # fmt: skip
    _time(args.since, request.since)
    _time(args.until, request.until)

    async def work(nc: Client) -> int:
        reply = await _ask(nc, subjects.AUDIT_QUERY, request, audit_pb2.AuditQueryResponse)
        if args.json:
            print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        else:
            for event in reply.events:
                print(_line(event))
            print(f"({len(reply.events)} of {reply.page.total_size} matching events)")
        return 0

    return _with_nats(args, work)


def _tail(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        done = asyncio.Event()

        async def on_batch(msg: Any) -> None:
            for event in audit_pb2.AuditBatch.FromString(msg.data).events:
                print(_line(event), flush=True)

        await nc.subscribe(subjects.AUDIT_APPENDED, cb=on_batch)
        print("tailing the audit log; Ctrl-C to stop", file=sys.stderr, flush=True)
        await done.wait()
        return 0

    return _with_nats(args, work)


def _checkpoint(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        cp = await _ask(nc, subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint)
        text = json.dumps(MessageToDict(cp, preserving_proto_field_name=True), indent=2)
        subcommands.save_or_print(text, args.save, f"checkpoint of {cp.tree_size} events")
        return 0

    return _with_nats(args, work)


def _proof(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from symbi_audit import canonical
    from symbi_audit.merkle import verify_inclusion

    async def work(nc: Client) -> int:
        reply = await _ask(nc, subjects.AUDIT_INCLUSION, audit_pb2.InclusionProofRequest(event_id=args.event_id),
                           audit_pb2.InclusionProofResponse)  # fmt: skip
        keys = await _ask(
            nc, subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest(), audit_pb2.ListSigningKeysResponse
        )
        cp, proof = reply.checkpoint, reply.proof
        key = next((k for k in keys.keys if k.key_id == cp.key_id), None)
        signed = False
        if key is not None:
            try:
                Ed25519PublicKey.from_public_bytes(key.public_key).verify(cp.signature, canonical.checkpoint_body(cp))
                signed = True
            except Exception:
                signed = False
        leaf_ok = canonical.leaf_hash(reply.event) == proof.leaf_hash
        included = verify_inclusion(proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.path), cp.root_hash)
        if args.json:
            print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        else:
            print(_line(reply.event))
            print(f"leaf {proof.leaf_index} of {proof.tree_size}: {len(proof.path)} hashes "
                  f"({32 * len(proof.path)} bytes)")  # fmt: skip
            print(f"event hashes to its leaf: {leaf_ok}; proof leads to the checkpoint root: {included}; "
                  f"checkpoint signed by {cp.key_id}: {signed}")  # fmt: skip
        return 0 if leaf_ok and included and signed else 1

    return _with_nats(args, work)


def _keys(args: argparse.Namespace) -> int:
    from symbi_audit.keys import public_keys_document

    async def work(nc: Client) -> int:
        reply = await _ask(
            nc, subjects.AUDIT_KEYS, audit_pb2.ListSigningKeysRequest(), audit_pb2.ListSigningKeysResponse
        )
        cp = await _ask(nc, subjects.AUDIT_CHECKPOINT, audit_pb2.GetCheckpointRequest(), audit_pb2.Checkpoint)
        text = json.dumps(public_keys_document(list(reply.keys), cp.log_id), indent=2)
        subcommands.save_or_print(text, args.save, f"{len(reply.keys)} keys of log {cp.log_id}")
        return 0

    return _with_nats(args, work)


def _report(args: argparse.Namespace) -> int:
    request = audit_pb2.ComplianceReportRequest(framework=args.framework, format=FORMATS[args.format])
    if args.definition:
        request.definition = args.definition.read_text()
    _time(args.since, request.since)
    _time(args.until, request.until)

    async def work(nc: Client) -> int:
        reply = await _ask(nc, subjects.AUDIT_REPORT, request, audit_pb2.ComplianceReportResponse)
        if args.out:
            args.out.write_bytes(reply.document)
            print(f"{reply.framework} report ({reply.media_type}) written to {args.out}")
        else:
            sys.stdout.write(reply.document.decode())
        return 0 if reply.integrity.ok else 1

    return _with_nats(args, work)


def _rotate(args: argparse.Namespace) -> int:
    async def work(nc: Client) -> int:
        request = audit_pb2.RotateSigningKeyRequest(reason=args.reason, requested_by="cli")
        key = await _ask(nc, subjects.AUDIT_ROTATE, request, audit_pb2.SigningKey)
        print(f"signing key is now {key.key_id} (the rotation is recorded in the log)")
        return 0

    return _with_nats(args, work)
