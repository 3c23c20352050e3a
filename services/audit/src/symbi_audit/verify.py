"""Verifying a log from its files and a trusted public key, and nothing else.

The verifier reads the segments in order and, for every event, checks that its
record is intact (``MALFORMED``), that its sequence is the next one
(``SEQUENCE_GAP`` when events are missing, ``CHAIN_BROKEN`` when one is repeated,
moved or inserted), and that its content hashes to its chain hash given the event
before it (``HASH_MISMATCH``). Event 0 must be the log's genesis, naming a public key
the auditor trusts; each ``audit.key_rotated`` event, signed by the key in force,
brings in the next one; an event signed with any other key is ``UNKNOWN_KEY``.

As the recomputed Merkle tree reaches each checkpoint's size, the checkpoint's
signature (``BAD_CHECKPOINT_SIGNATURE``), root and last chain hash
(``ROOT_MISMATCH``) are checked; two checkpoints of one size with different roots,
or a witness's checkpoint the log does not extend, are ``INCONSISTENT`` (a fork);
a checkpoint larger than the log is ``TRUNCATED``.

Batch verification is cheap by design: per event it is one canonical encoding and
two hashes; signatures are checked per checkpoint, and per event only when asked
(``check_event_signatures``) — or where a checkpoint does not match, to find the
first event that was rewritten (an attacker can recompute hashes, not signatures).
"""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from symbi_audit import canonical, storage
from symbi_audit.keys import key_id_of
from symbi_audit.merkle import MerkleTree
from symbi_proto.v1 import audit_pb2

K = audit_pb2.VerificationFailureKind
SIGNATURE_BATCH = 8192
GENESIS_TYPE = "audit.log_created"
ROTATION_TYPE = "audit.key_rotated"


class Failed(Exception):
    def __init__(self, kind: int, detail: str, sequence: int | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.sequence = kind, detail, sequence


@dataclass
class _State:
    trusted: dict[str, Ed25519PublicKey]
    check_signatures: bool
    start: int = 0
    known_leaves: bytes = b""
    expected: int = 0
    chain: bytes = canonical.GENESIS_CHAIN
    log_id: str = ""
    key_id: str = ""
    tree: MerkleTree = field(default_factory=MerkleTree)
    interval: list[audit_pb2.AuditEvent] = field(default_factory=list)
    checked_checkpoints: int = 0
    pending_signatures: list[audit_pb2.AuditEvent] = field(default_factory=list)
    roots: dict[int, bytes] = field(default_factory=dict)
    last_good: audit_pb2.Checkpoint | None = None


def read_checkpoints(directory: Path) -> list[audit_pb2.Checkpoint]:
    path = directory / "checkpoints.log"
    if not path.exists():
        return []
    out = []
    for item in storage.read_records(path):
        if isinstance(item, storage.BadRecord):
            if item.at_tail:  # a checkpoint being written, or torn by a crash: it commits to nothing yet
                break
            raise Failed(K.VERIFICATION_FAILURE_KIND_MALFORMED, f"{path}: {item.reason} at offset {item.offset}")
        try:
            out.append(audit_pb2.Checkpoint.FromString(item[1]))
        except DecodeError:
            raise Failed(K.VERIFICATION_FAILURE_KIND_MALFORMED, f"{path}: unreadable checkpoint at {item[0]}") from None
    return out


def _events(directory: Path) -> Iterator[audit_pb2.AuditEvent | Failed]:
    for _, path in storage.segments(directory / "log"):
        for item in storage.read_records(path):
            if isinstance(item, storage.BadRecord):
                yield Failed(
                    K.VERIFICATION_FAILURE_KIND_MALFORMED, f"{path.name}: {item.reason} at offset {item.offset}"
                )
                return
            try:
                yield audit_pb2.AuditEvent.FromString(item[1])
            except DecodeError:
                yield Failed(
                    K.VERIFICATION_FAILURE_KIND_MALFORMED, f"{path.name}: unreadable event at offset {item[0]}"
                )
                return


def verify_directory(
    directory: Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    to_sequence: int | None = None,
    check_event_signatures: bool = False,
    witness: Sequence[audit_pb2.Checkpoint] = (),
    from_sequence: int = 0,
    known_leaves: bytes = b"",
) -> audit_pb2.VerifyResponse:
    """Verify events [from_sequence, to_sequence) of the log in ``directory`` (all of it by default).

    Events before ``from_sequence`` are taken as already verified: their stored chain
    hashes and ``known_leaves`` (the log's leaf hashes) stand in for recomputation.
    """
    started = time.perf_counter()
    if len(known_leaves) < from_sequence * 32:
        raise ValueError("verifying from a sequence needs the leaf hashes before it")
    state = _State(dict(trusted), check_event_signatures, from_sequence, known_leaves)
    response = audit_pb2.VerifyResponse()
    try:
        checkpoints = read_checkpoints(directory)
        pending = sorted(
            (cp for cp in checkpoints if to_sequence is None or cp.tree_size <= to_sequence),
            key=lambda cp: cp.tree_size,
        )
        _check_order(checkpoints)
        for item in _events(directory):
            if to_sequence is not None and state.expected >= to_sequence:
                break  # past the range (a writer may be appending beyond it right now)
            if isinstance(item, Failed):
                item.sequence = state.expected
                raise item
            _check_event(state, item)
            while pending and pending[0].tree_size == state.tree.size:
                _flush_signatures(state)
                _check_checkpoint(state, pending.pop(0))
        _flush_signatures(state)
        if pending:
            cp = pending[0]
            raise Failed(
                K.VERIFICATION_FAILURE_KIND_TRUNCATED,
                f"a checkpoint commits to {cp.tree_size} events; the log holds {state.tree.size}",
                state.tree.size,
            )
        for cp in witness:
            _check_witness(state, cp)
        response.ok = True
    except Failed as failure:
        failure = _earliest(state, failure)
        response.ok = False
        response.failure.kind = failure.kind  # type: ignore[assignment]
        response.failure.detail = failure.detail
        if failure.sequence is not None:
            response.failure.sequence = failure.sequence
    response.events_checked = state.tree.size
    response.checkpoints_checked = state.checked_checkpoints
    if state.last_good is not None:
        response.checkpoint.CopyFrom(state.last_good)
    response.elapsed.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
    return response


def _earliest(state: _State, failure: Failed) -> Failed:
    """A bad signature among those not yet checked may come before the failure found: report that one."""
    try:
        _flush_signatures(state)
    except Failed as earlier:
        if earlier.sequence is not None and (failure.sequence is None or earlier.sequence < failure.sequence):
            return earlier
    return failure


def _check_order(checkpoints: Sequence[audit_pb2.Checkpoint]) -> None:
    for before, after in itertools.pairwise(checkpoints):
        if after.tree_size < before.tree_size:
            raise Failed(
                K.VERIFICATION_FAILURE_KIND_INCONSISTENT,
                f"checkpoint of size {after.tree_size} follows one of size {before.tree_size}",
                after.tree_size,
            )


def _check_event(state: _State, event: audit_pb2.AuditEvent) -> None:
    seq = state.expected
    if event.sequence != seq:
        if event.sequence > seq:
            raise Failed(K.VERIFICATION_FAILURE_KIND_SEQUENCE_GAP, f"expected event {seq}, found {event.sequence}", seq)
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_CHAIN_BROKEN,
            f"expected event {seq}, found {event.sequence} again (an event was inserted or moved)",
            seq,
        )
    if seq < state.start:  # verified before: trust the stored hashes, follow the keys
        _follow_keys(state, event)
        state.tree.append(state.known_leaves[seq * 32 : seq * 32 + 32])
        state.chain = event.chain_hash
        state.expected += 1
        return
    try:
        leaf = canonical.leaf_hash(event)
    except canonical.CanonicalError as exc:
        raise Failed(K.VERIFICATION_FAILURE_KIND_MALFORMED, f"event {seq}: {exc}", seq) from None
    chain_hash = canonical.chain(state.chain, leaf)
    if chain_hash != event.chain_hash:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_HASH_MISMATCH,
            f"event {seq} ({event.event_type}) does not hash to its chain hash: its content or a predecessor changed",
            seq,
        )
    if seq == 0:
        _genesis(state, event)
    elif event.key_id != state.key_id:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY,
            f"event {seq} is signed with key {event.key_id!r}; the key in force is {state.key_id}",
            seq,
        )
    if seq == 0 or event.event_type == ROTATION_TYPE:
        _flush_signatures(state)
        _check_signature(state, event)
    elif state.check_signatures:
        state.pending_signatures.append(event)
        if len(state.pending_signatures) >= SIGNATURE_BATCH:
            _flush_signatures(state)
    if event.event_type == ROTATION_TYPE:
        _rotate(state, event)
    state.tree.append(leaf)
    state.chain = chain_hash
    state.expected += 1
    state.interval.append(event)


def _follow_keys(state: _State, event: audit_pb2.AuditEvent) -> None:
    if event.sequence == 0:
        _genesis(state, event)
    elif event.event_type == ROTATION_TYPE:
        _rotate(state, event)


def _flush_signatures(state: _State) -> None:
    """Check the signatures gathered so far, on every core; the first bad one (by sequence) fails."""
    batch, state.pending_signatures = state.pending_signatures, []
    if not batch:
        return
    chunks = [batch[i : i + 512] for i in range(0, len(batch), 512)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # verify releases the GIL
        bad = [seq for found in pool.map(lambda c: _bad_signatures(state, c), chunks) for seq in found]
    if bad:
        first = min(bad)
        raise Failed(K.VERIFICATION_FAILURE_KIND_BAD_EVENT_SIGNATURE, f"event {first} has a bad signature", first)


def _bad_signatures(state: _State, events: list[audit_pb2.AuditEvent]) -> list[int]:
    bad = []
    for event in events:
        key = state.trusted.get(event.key_id)
        try:
            if key is None:
                raise InvalidSignature
            key.verify(event.signature, canonical.event_signing_input(event.chain_hash))
        except InvalidSignature:
            bad.append(event.sequence)
    return bad


def _check_signature(state: _State, event: audit_pb2.AuditEvent) -> None:
    key = state.trusted.get(event.key_id)
    if key is None:
        raise Failed(K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, f"key {event.key_id!r} is not trusted", event.sequence)
    try:
        key.verify(event.signature, canonical.event_signing_input(event.chain_hash))
    except InvalidSignature:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_BAD_EVENT_SIGNATURE,
            f"event {event.sequence} has a bad signature",
            event.sequence,
        ) from None


def _genesis(state: _State, event: audit_pb2.AuditEvent) -> None:
    details = canonical.struct_to_python(event.details)
    if event.event_type != GENESIS_TYPE:
        raise Failed(K.VERIFICATION_FAILURE_KIND_CHAIN_BROKEN, f"event 0 is {event.event_type}, not the genesis", 0)
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(details["public_key"]))
    except (KeyError, ValueError, TypeError):
        raise Failed(K.VERIFICATION_FAILURE_KIND_MALFORMED, "the genesis event names no public key", 0) from None
    key_id = key_id_of(base64.b64decode(details["public_key"]))
    if key_id not in state.trusted:
        raise Failed(K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, f"the log's first key {key_id} is not the trusted key", 0)
    if event.key_id != key_id:
        raise Failed(K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, "the genesis event is not signed by the key it names", 0)
    state.trusted[key_id] = public
    state.key_id = key_id
    state.log_id = str(details.get("log_id", ""))


def _rotate(state: _State, event: audit_pb2.AuditEvent) -> None:
    details = canonical.struct_to_python(event.details)
    try:
        raw = base64.b64decode(details["new_public_key"])
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, ValueError, TypeError):
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_MALFORMED, f"rotation event {event.sequence} names no key", event.sequence
        ) from None
    key_id = key_id_of(raw)
    state.trusted[key_id] = public  # vouched for by the signature of the key in force
    state.key_id = key_id


def _check_signed(state: _State, cp: audit_pb2.Checkpoint, what: str) -> None:
    key = state.trusted.get(cp.key_id)
    if key is None:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, f"{what} is signed with unknown key {cp.key_id}", cp.tree_size
        )
    try:
        key.verify(cp.signature, canonical.checkpoint_body(cp))
    except InvalidSignature:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_BAD_CHECKPOINT_SIGNATURE, f"{what} has a bad signature", cp.tree_size
        ) from None


def _check_checkpoint(state: _State, cp: audit_pb2.Checkpoint) -> None:
    size = cp.tree_size
    _check_signed(state, cp, f"checkpoint {size}")
    if state.log_id and cp.log_id != state.log_id:
        raise Failed(K.VERIFICATION_FAILURE_KIND_INCONSISTENT, f"checkpoint {size} is of log {cp.log_id}", size)
    seen = state.roots.get(size)
    if seen is not None and seen != cp.root_hash:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_INCONSISTENT, f"two signed checkpoints of size {size} differ: a fork", size
        )
    if cp.root_hash != state.tree.root() or cp.last_chain_hash != state.chain:
        culprit = _first_forged(state)
        where = f"; event {culprit} is the first whose signature fails" if culprit is not None else ""
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_ROOT_MISMATCH,
            f"checkpoint {size} does not match the events it commits to{where}",
            culprit if culprit is not None else size,
        )
    state.roots[size] = cp.root_hash
    state.checked_checkpoints += 1
    state.last_good = cp
    state.interval = []


def _first_forged(state: _State) -> int | None:
    """Events since the last good checkpoint whose signatures fail: the first is the forgery."""
    for event in state.interval:
        key = state.trusted.get(event.key_id)
        try:
            if key is None:
                return event.sequence
            key.verify(event.signature, canonical.event_signing_input(event.chain_hash))
        except InvalidSignature:
            return event.sequence
    return None


def _check_witness(state: _State, cp: audit_pb2.Checkpoint) -> None:
    """A checkpoint kept elsewhere (a witness, an earlier download): this log must extend it."""
    size = cp.tree_size
    _check_signed(state, cp, f"witness checkpoint {size}")
    if size > state.tree.size:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_TRUNCATED,
            f"a witness holds a checkpoint of {size} events; the log holds {state.tree.size}",
            state.tree.size,
        )
    if state.tree.root(size) != cp.root_hash:
        raise Failed(
            K.VERIFICATION_FAILURE_KIND_INCONSISTENT,
            f"the log's first {size} events do not match the witness's signed checkpoint: a fork",
            size,
        )
    state.checked_checkpoints += 1


@dataclass(frozen=True, slots=True)
class Inclusion:
    """An event proven to be in the log under a checkpoint (RFC 9162 inclusion proof)."""

    event: audit_pb2.AuditEvent
    leaf_index: int
    tree_size: int
    path: list[bytes]
    proven: bool


def prove_inclusion(
    directory: Path, event_ids: Sequence[str], checkpoint: audit_pb2.Checkpoint
) -> dict[str, Inclusion | None]:
    """Inclusion proofs, from the files alone, of ``event_ids`` under ``checkpoint``.

    ``checkpoint`` is one ``verify_directory`` has verified (its signature and root);
    each proof is built from the recomputed leaves and checked against that root. An
    event that is not in the log, or not yet under the checkpoint, maps to None.
    """
    from symbi_audit.merkle import verify_inclusion

    wanted = set(event_ids)
    found: dict[str, tuple[int, audit_pb2.AuditEvent]] = {}
    tree = MerkleTree()
    for item in _events(directory):
        if isinstance(item, Failed) or tree.size >= checkpoint.tree_size:
            break
        if item.event_id in wanted:
            found[item.event_id] = (tree.size, item)
        tree.append(canonical.leaf_hash(item))
    out: dict[str, Inclusion | None] = {}
    for event_id in event_ids:
        if event_id not in found or tree.size < checkpoint.tree_size:
            out[event_id] = None
            continue
        index, event = found[event_id]
        path = tree.inclusion_proof(index, checkpoint.tree_size)
        leaf = canonical.leaf_hash(event)
        ok = verify_inclusion(index, checkpoint.tree_size, leaf, path, checkpoint.root_hash)
        out[event_id] = Inclusion(event, index, checkpoint.tree_size, path, ok)
    return out
