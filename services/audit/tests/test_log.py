"""The log on disk: genesis, chaining, signatures, checkpoints, crash repair, rotation, proofs."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest

from symbi_audit import canonical, storage
from symbi_audit.log import GENESIS_TYPE, REPAIR_TYPE, ROTATION_TYPE, AuditLog, LogOptions
from symbi_audit.merkle import verify_consistency, verify_inclusion
from symbi_audit.verify import verify_directory
from symbi_proto.v1 import audit_pb2

from .conftest import MakeEvents, Trusted


def test_a_new_log_starts_with_its_genesis(audit_log: AuditLog, log_dir: Path) -> None:
    genesis = audit_log.event(0)
    assert genesis.event_type == GENESIS_TYPE
    assert genesis.details["log_id"] == audit_log.log_id == audit_log.keys.keys[0].key_id
    assert audit_log.checkpoints[0].tree_size == 1
    assert json.loads((log_dir / "log.json").read_text())["log_id"] == audit_log.log_id
    keys_dir = log_dir / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for pem in keys_dir.glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600


def test_appended_events_are_sequenced_chained_and_signed(audit_log: AuditLog, make_events: MakeEvents) -> None:
    stored = audit_log.append(make_events(25))
    assert [e.sequence for e in stored] == list(range(1, 26))
    previous = audit_log.event(0).chain_hash
    public = audit_log.keys.current.public
    for event in stored:
        assert event.chain_hash == canonical.chain(previous, canonical.leaf_hash(event))
        public.verify(event.signature, canonical.event_signing_input(event.chain_hash))
        previous = event.chain_hash
    assert [cp.tree_size for cp in audit_log.checkpoints] == [1, 26]  # after each batch that passed 10 events
    audit_log.append(make_events(5))
    assert len(audit_log.checkpoints) == 2
    assert audit_log.event(7) == stored[6]


def test_everything_survives_a_restart(
    audit_log: AuditLog, log_dir: Path, make_events: MakeEvents, trusted_of: Trusted
) -> None:
    audit_log.append(make_events(30))
    root, head = audit_log.tree.root(), audit_log.head_chain
    audit_log.close()
    reopened = AuditLog.open(log_dir)
    try:
        assert (reopened.size, reopened.tree.root(), reopened.head_chain) == (31, root, head)
        assert reopened.repairs == []
        reopened.append(make_events(5, start=30))
    finally:
        reopened.close()
    result = verify_directory(log_dir, trusted_of(reopened))
    assert result.ok, result.failure
    assert result.events_checked == 36


def test_events_a_crashed_writer_left_unchecked_get_a_checkpoint(
    audit_log: AuditLog, log_dir: Path, make_events: MakeEvents
) -> None:
    audit_log.append(make_events(3))  # fewer than a checkpoint's worth: no checkpoint yet
    assert audit_log.checkpoints[-1].tree_size == 1
    # The writer dies here (no close(), which would checkpoint); the next one opens the log.
    reopened = AuditLog.open(log_dir, LogOptions(checkpoint_every=10, checkpoint_interval_s=0.0))
    try:
        assert reopened.checkpoint_due()  # with no new event at all
        assert reopened.checkpoint().tree_size == 4
    finally:
        reopened.close()


def test_a_torn_last_record_is_repaired_and_reported(
    audit_log: AuditLog, log_dir: Path, make_events: MakeEvents, trusted_of: Trusted
) -> None:
    audit_log.append(make_events(12))
    audit_log.close()
    (_, segment), *_ = reversed(storage.segments(log_dir / "log"))
    record = storage.frame(make_events(1)[0].SerializeToString())
    with open(segment, "ab") as f:
        f.write(record[: len(record) // 2])  # the crash came mid-write
    with open(log_dir / "checkpoints.log", "ab") as f:
        f.write(b"\x00\x00\x01")
    reopened = AuditLog.open(log_dir)
    try:
        assert reopened.size == 14  # 13 events + the record of the repair
        assert len(reopened.repairs) == 2
        repair = reopened.event(13)
        assert repair.event_type == REPAIR_TYPE
        assert "torn record" in canonical.struct_to_python(repair.details)["repairs"][0]
    finally:
        reopened.close()
    assert verify_directory(log_dir, trusted_of(reopened)).ok


def test_damage_before_the_tail_is_not_silently_cut(
    audit_log: AuditLog, log_dir: Path, make_events: MakeEvents
) -> None:
    audit_log.append(make_events(12))
    audit_log.close()
    (_, segment), *_ = storage.segments(log_dir / "log")
    data = bytearray(segment.read_bytes())
    data[40] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(storage.CorruptLog, match="damaged record at offset 0"):
        AuditLog.open(log_dir)


@pytest.mark.parametrize("lost", ["leaves.bin", "index.sqlite"])
def test_derived_files_are_rebuilt(audit_log: AuditLog, log_dir: Path, lost: str, make_events: MakeEvents) -> None:
    audit_log.append(make_events(20))
    root = audit_log.tree.root()
    audit_log.close()
    for path in log_dir.glob(f"{lost}*"):
        path.unlink()
    reopened = AuditLog.open(log_dir)
    try:
        assert reopened.tree.root() == root
        assert reopened.index.last_sequence() == 20
        assert reopened.event(5).sequence == 5
    finally:
        reopened.close()


def test_leaves_and_index_past_the_log_are_dropped(audit_log: AuditLog, log_dir: Path, make_events: MakeEvents) -> None:
    audit_log.append(make_events(5))
    size_after_five = storage.segments(log_dir / "log")[-1][1].stat().st_size
    audit_log.append(make_events(5, start=5))
    audit_log.close()
    segment = storage.segments(log_dir / "log")[-1][1]
    with open(segment, "r+b") as f:  # as if the last batch never reached the disk
        f.truncate(size_after_five)
    (log_dir / "checkpoints.log").unlink()
    reopened = AuditLog.open(log_dir)
    try:
        assert reopened.size == 6
        assert reopened.index.last_sequence() == 5
        assert len(storage.read_leaves(log_dir / "leaves.bin")) == 6 * 32
    finally:
        reopened.close()


def test_segments_rotate(log_dir: Path, make_events: MakeEvents, trusted_of: Trusted) -> None:
    small = AuditLog.open(log_dir, LogOptions(segment_bytes=4096))
    try:
        small.append(make_events(60))
        assert len(storage.segments(log_dir / "log")) > 3
        assert [e.sequence for e in small.events(25, 35)] == list(range(25, 35))
        assert small.event(59).details["n"] == 58
    finally:
        small.close()
    reopened = AuditLog.open(log_dir, LogOptions(segment_bytes=4096))
    try:
        reopened.append(make_events(3))
        assert reopened.size == 64
    finally:
        reopened.close()
    assert verify_directory(log_dir, trusted_of(reopened)).ok


def test_key_rotation_is_recorded_in_the_log(audit_log: AuditLog, log_dir: Path, make_events: MakeEvents) -> None:
    first = audit_log.keys.current
    audit_log.append(make_events(3))
    old, new, event = audit_log.rotate_key("scheduled")
    assert (old.key_id, event.event_type, event.key_id) == (first.key_id, ROTATION_TYPE, first.key_id)
    assert event.details["new_key_id"] == new.key_id
    (after,) = audit_log.append(make_events(1))
    assert after.key_id == new.key_id
    assert audit_log.checkpoints[-1].key_id == new.key_id
    assert [k.key_id for k in audit_log.signing_keys()] == [first.key_id, new.key_id]
    audit_log.close()
    result = verify_directory(log_dir, {first.key_id: first.public}, check_event_signatures=True)
    assert result.ok, result.failure
    reopened = AuditLog.open(log_dir)
    try:
        assert reopened.keys.current.key_id == new.key_id
    finally:
        reopened.close()


def test_inclusion_and_consistency_proofs_check_out(audit_log: AuditLog, make_events: MakeEvents) -> None:
    audit_log.append(make_events(95))
    rng = random.Random(3)
    latest = audit_log.checkpoints[-1]
    for sequence in rng.sample(range(latest.tree_size), 15):
        proof = audit_log.tree.inclusion_proof(sequence, latest.tree_size)
        leaf = canonical.leaf_hash(audit_log.event(sequence))
        assert verify_inclusion(sequence, latest.tree_size, leaf, proof, latest.root_hash)
    for first, second in zip(audit_log.checkpoints, audit_log.checkpoints[3:], strict=False):
        proof = audit_log.tree.consistency_proof(first.tree_size, second.tree_size)
        assert verify_consistency(first.tree_size, second.tree_size, first.root_hash, second.root_hash, proof)


def test_non_finite_numbers_have_no_canonical_form() -> None:
    event = audit_pb2.AuditEvent(event_id="x", event_type="t")
    event.details.fields["bad"].number_value = float("nan")
    with pytest.raises(canonical.CanonicalError):
        canonical.leaf_hash(event)


def test_an_unreadable_key_refuses_to_start(audit_log: AuditLog, log_dir: Path) -> None:
    audit_log.close()
    (pem,) = (log_dir / "keys").glob("*.pem")
    os.chmod(pem, 0o644)
    with pytest.raises(Exception, match="readable by others"):
        AuditLog.open(log_dir)
    os.chmod(pem, 0o600)
    shutil.copy(pem, pem.with_suffix(".bak"))
    pem.write_text("not a key")
    with pytest.raises(Exception, match="unreadable"):
        AuditLog.open(log_dir)
