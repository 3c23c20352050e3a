"""Every way of tampering with the files is detected, and located where the construction allows."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from symbi_audit import canonical, storage
from symbi_audit.log import AuditLog, LogOptions
from symbi_audit.verify import read_checkpoints, verify_directory
from symbi_proto.v1 import audit_pb2

from .conftest import MakeEvents, Trusted

K = audit_pb2.VerificationFailureKind
Trust = Mapping[str, Ed25519PublicKey]
Events = list[audit_pb2.AuditEvent]


@pytest.fixture
def sealed(log_dir: Path, make_events: MakeEvents) -> Path:
    """A closed log of 41 events (genesis + 40), checkpointed every 10."""
    log = AuditLog.open(log_dir, LogOptions(checkpoint_every=10, checkpoint_interval_s=3600))
    for start in range(0, 40, 10):
        log.append(make_events(10, start=start))
    log.close()
    return log_dir


@pytest.fixture
def trusted(sealed: Path) -> Trust:
    log = AuditLog.open(sealed)
    try:
        first = log.keys.keys[0]
        return {first.key_id: first.public}
    finally:
        log.close()


def stored(directory: Path) -> Events:
    return [
        audit_pb2.AuditEvent.FromString(item[1])  # type: ignore[index]
        for _, path in storage.segments(directory / "log")
        for item in storage.read_records(path)
    ]


def rewrite(directory: Path, change: Callable[[Events], Events]) -> None:
    """Replace the segments with ``change(events)``, framed with valid CRCs (what an attacker can do)."""
    events = change(stored(directory))
    for _, path in storage.segments(directory / "log"):
        path.unlink()
    with open(directory / "log" / storage.segment_name(0), "wb") as f:
        for event in events:
            f.write(storage.frame(event.SerializeToString()))


def write_checkpoints(directory: Path, checkpoints: list[audit_pb2.Checkpoint]) -> None:
    with open(directory / "checkpoints.log", "wb") as f:
        for cp in checkpoints:
            f.write(storage.frame(cp.SerializeToString()))


def failure(directory: Path, trusted: Trust, **kw: object) -> audit_pb2.VerificationFailure:
    result = verify_directory(directory, trusted, **kw)  # type: ignore[arg-type]  # the keywords are typed there
    assert not result.ok
    return result.failure


def test_the_untouched_log_verifies(sealed: Path, trusted: Trust) -> None:
    result = verify_directory(sealed, trusted, check_event_signatures=True)
    assert result.ok, result.failure
    assert (result.events_checked, result.checkpoints_checked) == (41, 5)
    assert result.checkpoint.tree_size == 41


def test_a_flipped_bit_breaks_the_record(sealed: Path, trusted: Trust) -> None:
    (_, segment), *_ = storage.segments(sealed / "log")
    offsets = [item[0] for item in storage.read_records(segment)]  # type: ignore[index]
    data = bytearray(segment.read_bytes())
    data[offsets[17] + 20] ^= 0x04
    segment.write_bytes(bytes(data))
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_MALFORMED, 17)


def test_a_changed_event_with_a_fixed_up_crc_is_a_hash_mismatch(sealed: Path, trusted: Trust) -> None:
    def edit(events: Events) -> Events:
        events[23].details["n"] = 9999
        return events

    rewrite(sealed, edit)
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_HASH_MISMATCH, 23)


def test_a_changed_timestamp_is_caught(sealed: Path, trusted: Trust) -> None:
    def backdate(events: Events) -> Events:
        events[5].timestamp.seconds -= 3600
        return events

    rewrite(sealed, backdate)
    assert failure(sealed, trusted).sequence == 5


def test_a_deleted_event(sealed: Path, trusted: Trust) -> None:
    rewrite(sealed, lambda events: events[:12] + events[13:])
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_SEQUENCE_GAP, 12)


def test_two_reordered_events(sealed: Path, trusted: Trust) -> None:
    def swap(events: Events) -> Events:
        events[30], events[31] = events[31], events[30]
        return events

    rewrite(sealed, swap)
    found = failure(sealed, trusted)
    assert found.sequence == 30
    assert found.kind == K.VERIFICATION_FAILURE_KIND_SEQUENCE_GAP


def test_an_inserted_event(sealed: Path, trusted: Trust) -> None:
    def insert(events: Events) -> Events:
        forged = audit_pb2.AuditEvent()
        forged.CopyFrom(events[8])
        forged.details["n"] = -1
        return [*events[:8], forged, *events[8:]]

    rewrite(sealed, insert)
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_HASH_MISMATCH, 8)


def test_a_replayed_copy_of_an_earlier_event(sealed: Path, trusted: Trust) -> None:
    rewrite(sealed, lambda events: [*events[:20], events[19], *events[20:]])
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_CHAIN_BROKEN, 20)


def test_a_rewritten_history_with_recomputed_hashes_is_caught_by_signatures(sealed: Path, trusted: Trust) -> None:
    """The attacker edits event 15 and recomputes every later chain hash; only the key can't be faked."""

    def rechain(events: Events) -> Events:
        events[15].details["n"] = 12345
        previous = events[14].chain_hash
        for event in events[15:]:
            event.chain_hash = canonical.chain(previous, canonical.leaf_hash(event))
            previous = event.chain_hash
        return events

    rewrite(sealed, rechain)
    found = failure(sealed, trusted)
    assert found.kind == K.VERIFICATION_FAILURE_KIND_ROOT_MISMATCH
    assert found.sequence == 15  # located: the first event whose signature fails
    assert "event 15 is the first whose signature fails" in found.detail
    strict = failure(sealed, trusted, check_event_signatures=True)
    assert (strict.kind, strict.sequence) == (K.VERIFICATION_FAILURE_KIND_BAD_EVENT_SIGNATURE, 15)


def test_a_truncated_tail(sealed: Path, trusted: Trust) -> None:
    rewrite(sealed, lambda events: events[:35])
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_TRUNCATED, 35)


def test_a_truncated_tail_with_its_checkpoints_removed_is_caught_by_a_witness(sealed: Path, trusted: Trust) -> None:
    witness = read_checkpoints(sealed)[-1]  # an auditor kept the latest signed checkpoint
    rewrite(sealed, lambda events: events[:35])
    kept = [cp for cp in read_checkpoints(sealed) if cp.tree_size <= 35]
    write_checkpoints(sealed, kept)
    assert verify_directory(sealed, trusted).ok  # consistent on its own ...
    found = failure(sealed, trusted, witness=[witness])  # ... but not with what the witness holds
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_TRUNCATED, 35)


def test_a_replaced_checkpoint_signature(sealed: Path, trusted: Trust) -> None:
    checkpoints = read_checkpoints(sealed)
    checkpoints[2].signature = bytes(64)
    write_checkpoints(sealed, checkpoints)
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_BAD_CHECKPOINT_SIGNATURE, 21)


def test_a_forged_checkpoint_root(sealed: Path, trusted: Trust) -> None:
    checkpoints = read_checkpoints(sealed)
    checkpoints[1].root_hash = bytes(32)
    write_checkpoints(sealed, checkpoints)
    found = failure(sealed, trusted)
    assert found.kind == K.VERIFICATION_FAILURE_KIND_BAD_CHECKPOINT_SIGNATURE  # the root is inside the signature


def test_a_fork_two_histories_of_one_size(sealed: Path, tmp_path: Path, make_events: MakeEvents) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(sealed, twin)
    for directory, tag in ((sealed, "ours"), (twin, "theirs")):
        log = AuditLog.open(directory, LogOptions(checkpoint_every=5, checkpoint_interval_s=3600))
        log.append(make_events(5, prefix=f"fork.{tag}"))
        log.close()
    log = AuditLog.open(sealed)
    first = log.keys.keys[0]
    log.close()
    trusted = {first.key_id: first.public}
    theirs = read_checkpoints(twin)[-1]
    assert theirs.tree_size == read_checkpoints(sealed)[-1].tree_size == 46  # same size, different history
    found = failure(sealed, trusted, witness=[theirs])
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_INCONSISTENT, 46)
    with open(sealed / "checkpoints.log", "ab") as f:  # the server equivocates in its own file
        f.write(storage.frame(theirs.SerializeToString()))
    assert failure(sealed, trusted).kind == K.VERIFICATION_FAILURE_KIND_INCONSISTENT


def test_a_log_made_with_another_key_is_not_trusted(sealed: Path, tmp_path: Path, trusted_of: Trusted) -> None:
    impostor = AuditLog.open(tmp_path / "impostor")
    impostor.close()
    found = failure(tmp_path / "impostor", verify_keys(sealed))
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, 0)
    assert verify_directory(tmp_path / "impostor", trusted_of(impostor)).ok


def verify_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    log = AuditLog.open(directory)
    try:
        return {k.key_id: k.public for k in log.keys.keys}
    finally:
        log.close()


def test_a_range_verifies_from_a_trusted_prefix(sealed: Path, trusted: Trust) -> None:
    leaves = storage.read_leaves(sealed / "leaves.bin")
    result = verify_directory(sealed, trusted, from_sequence=30, known_leaves=leaves)
    assert result.ok, result.failure
    assert result.checkpoints_checked == 5
    rewrite(sealed, lambda events: [*events[:35], *[_edited(e) for e in events[35:36]], *events[36:]])
    found = verify_directory(sealed, trusted, from_sequence=30, known_leaves=leaves).failure
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_HASH_MISMATCH, 35)
    with pytest.raises(ValueError, match="needs the leaf hashes"):
        verify_directory(sealed, trusted, from_sequence=30)


def _edited(event: audit_pb2.AuditEvent) -> audit_pb2.AuditEvent:
    event.details["n"] = -5
    return event


def test_an_event_signed_by_a_key_not_in_force(sealed: Path, trusted: Trust) -> None:
    def resign(events: Events) -> Events:
        events[10].key_id = "0000000000000000"
        return events

    rewrite(sealed, resign)
    found = failure(sealed, trusted)
    assert (found.kind, found.sequence) == (K.VERIFICATION_FAILURE_KIND_UNKNOWN_KEY, 10)


def test_damage_in_the_middle_of_the_checkpoint_file(sealed: Path, trusted: Trust) -> None:
    data = bytearray((sealed / "checkpoints.log").read_bytes())
    data[12] ^= 0xFF
    (sealed / "checkpoints.log").write_bytes(bytes(data))
    assert failure(sealed, trusted).kind == K.VERIFICATION_FAILURE_KIND_MALFORMED


def test_a_log_that_does_not_start_with_its_genesis(sealed: Path, trusted: Trust) -> None:
    def drop_genesis(events: Events) -> Events:
        events[1].sequence = 0
        return events[1:]

    rewrite(sealed, drop_genesis)
    assert failure(sealed, trusted).sequence == 0
