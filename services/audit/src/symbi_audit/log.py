"""The audit log: append, chain, sign, checkpoint, read, prove.

``AuditLog.open`` brings the files to a consistent state before anything else
happens: a torn segment tail is cut (``storage.py``), leaf hashes and index rows
missing after a crash are rebuilt from the segments, the Merkle tree is rebuilt
from the leaf hashes, and an empty log gets its genesis event
(``audit.log_created``, naming the log id and the first public key).

``append`` takes validated, deduplicated events in order and, for the batch:
assigns sequences; computes each leaf hash and chain hash; signs every chain hash
(Ed25519, in chunks on a small thread pool while the next chunk is hashed:
``cryptography`` releases the GIL while signing);
writes the records and fsyncs the segment; then extends the leaf file, the tree and
the index. Only then may the caller acknowledge the batch. A checkpoint (tree size,
root, time, last chain hash, signed) is written every ``checkpoint_every`` events or
``checkpoint_interval_s`` seconds, whichever comes first, and on close.

One process writes (the lease holder, ``lease.py``); other replicas open the same
directory read-only and ``refresh`` to follow it.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import DecodeError

from symbi_audit import canonical, storage
from symbi_audit.index import Index, Location
from symbi_audit.keys import KeyRing, SigningKey, raw_public
from symbi_audit.merkle import MerkleTree
from symbi_common.audit_events import build_event
from symbi_common.errors import ConfigError, InvalidArgumentError, NotFoundError
from symbi_proto.v1 import audit_pb2

log = logging.getLogger(__name__)

GENESIS_TYPE = "audit.log_created"
ROTATION_TYPE = "audit.key_rotated"
REPAIR_TYPE = "audit.log_repaired"
META = "log.json"
SIGN_CHUNK = 128  # events per signing job: hashing the next chunk overlaps signing this one


@dataclass(frozen=True, slots=True)
class LogOptions:
    durable: bool = True
    segment_bytes: int = 64 * 1024 * 1024
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 1.0
    signing_threads: int = 2
    signing_key_file: Path | None = None
    """The first signing key of a new log (see ``KeyRing.open``); ``None``: generate one."""


class AuditLog:
    def __init__(self, directory: Path, options: LogOptions, source: str) -> None:
        self.directory = directory
        self.options = options
        self.source = source
        self.log_dir = directory / "log"
        self.keys: KeyRing
        self.log_id = ""
        self.tree = MerkleTree()
        self.head_chain = canonical.GENESIS_CHAIN
        self.checkpoints: list[audit_pb2.Checkpoint] = []
        self.repairs: list[str] = []
        self.index: Index
        self._segment: storage.AppendFile | None = None
        self._segment_first = 0
        self._leaves: storage.AppendFile | None = None
        self._checkpoint_file: storage.AppendFile | None = None
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()
        self._pool = concurrent.futures.ThreadPoolExecutor(options.signing_threads, thread_name_prefix="audit-sign")
        self.writable = False

    @property
    def size(self) -> int:
        return self.tree.size

    # Opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, options: LogOptions | None = None, *, source: str = "audit") -> AuditLog:
        """Open for writing: repair, rebuild what is derived, create the log if it is new."""
        audit_log = cls(directory, options or LogOptions(), source)
        audit_log._open_writer()
        return audit_log

    @classmethod
    def open_readonly(cls, directory: Path, *, source: str = "audit") -> AuditLog:
        """Open a log another process writes, to answer queries; ``refresh`` to follow it."""
        meta = directory / META
        if not meta.exists():
            raise NotFoundError(f"there is no audit log in {directory} yet")
        audit_log = cls(directory, LogOptions(), source)
        audit_log.log_id = str(json.loads(meta.read_text())["log_id"])
        audit_log.keys = KeyRing.open(directory / "keys", create=False)
        audit_log.index = Index(directory / "index.sqlite", readonly=True)
        audit_log.refresh()
        return audit_log

    def _open_writer(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(exist_ok=True, mode=0o700)
        self.keys = KeyRing.open(self.directory / "keys", initial=self.options.signing_key_file)
        meta = self.directory / META
        if meta.exists():
            try:
                self.log_id = str(json.loads(meta.read_text())["log_id"])
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"{meta} is unreadable: {exc}") from None
        else:
            self.log_id = self.keys.keys[0].key_id
            meta.write_text(json.dumps({"log_id": self.log_id, "format": canonical.FORMAT_VERSION}))
        found = storage.segments(self.log_dir)
        if found:
            repair = storage.repair_tail(found[-1][1])
            if repair is not None:
                self.repairs.append(str(repair))
                log.warning("audit log repaired: %s", repair)
        self.index = Index(self.directory / "index.sqlite")
        self._rebuild(found)
        self._load_checkpoints(repair_tail=True)
        # Events a crashed writer appended after its last checkpoint are owed one: count them, so
        # the next checkpoint comes within the interval even if no new event ever arrives.
        self._since_checkpoint = self.size - (self.checkpoints[-1].tree_size if self.checkpoints else 0)
        self._open_for_append()
        self.writable = True
        if self.size == 0:
            self._genesis()
        elif self.repairs:
            self.append([self._system_event(REPAIR_TYPE, {"repairs": self.repairs})])

    def _rebuild(self, found: list[tuple[int, Path]]) -> None:
        """Leaves and index from the segments wherever they fall short; the tree from the leaves."""
        leaves_path = self.directory / "leaves.bin"
        leaves = storage.read_leaves(leaves_path)
        known = len(leaves) // storage.LEAF_SIZE
        indexed = self.index.last_sequence()
        extra_leaves, extra_rows = bytearray(), []
        count = 0
        for first, path in found:
            for item in storage.read_records(path):
                if isinstance(item, storage.BadRecord):  # repaired above; a later one is damage
                    raise storage.CorruptLog(f"{path}: {item.reason} at offset {item.offset}")
                offset, payload = item
                if count >= known or count > indexed:
                    event = self._parse(payload, path, offset)
                    if count >= known:
                        extra_leaves += canonical.leaf_hash(event)
                    if count > indexed:
                        extra_rows.append((event, first, offset))
                count += 1
            self._segment_first = first
        if known > count:  # leaf hashes of events a crash took back: drop them
            leaves = leaves[: count * storage.LEAF_SIZE]
        all_leaves = bytes(leaves) + bytes(extra_leaves)
        with open(leaves_path, "wb") as f:
            f.write(all_leaves)
            f.flush()
            os.fsync(f.fileno())
        if indexed >= count:
            self.index.truncate_after(count - 1)
        if extra_rows:
            self.index.add(extra_rows)
        self.tree = MerkleTree(all_leaves[i : i + 32] for i in range(0, len(all_leaves), 32))
        if count:
            self.head_chain = self._last_chain(found)
        if extra_leaves or extra_rows:
            log.info("audit log: rebuilt %d leaf hashes and %d index rows", len(extra_leaves) // 32, len(extra_rows))

    def _last_chain(self, found: list[tuple[int, Path]]) -> bytes:
        last = None
        for item in storage.read_records(found[-1][1]):
            if not isinstance(item, storage.BadRecord):
                last = item
        if last is None:  # an empty last segment: the previous one ends the log
            return self._last_chain(found[:-1]) if len(found) > 1 else canonical.GENESIS_CHAIN
        return self._parse(last[1], found[-1][1], last[0]).chain_hash

    @staticmethod
    def _parse(payload: bytes, path: Path, offset: int) -> audit_pb2.AuditEvent:
        event = audit_pb2.AuditEvent()
        try:
            event.ParseFromString(payload)
        except DecodeError:
            raise storage.CorruptLog(f"{path}: unreadable event at offset {offset}") from None
        return event

    def _load_checkpoints(self, *, repair_tail: bool) -> None:
        path = self.directory / "checkpoints.log"
        if not path.exists():
            return
        if repair_tail:
            repair = storage.repair_tail(path)
            if repair is not None:
                self.repairs.append(str(repair))
        self.checkpoints = []
        for item in storage.read_records(path):
            if isinstance(item, storage.BadRecord):
                break
            self.checkpoints.append(audit_pb2.Checkpoint.FromString(item[1]))

    def _open_for_append(self) -> None:
        durable = self.options.durable
        self._leaves = storage.AppendFile(self.directory / "leaves.bin", durable=durable)
        self._checkpoint_file = storage.AppendFile(self.directory / "checkpoints.log", durable=durable)
        self._open_segment(self._segment_first if storage.segments(self.log_dir) else self.size)

    def _open_segment(self, first: int) -> None:
        if self._segment is not None:
            self._segment.close()
        self._segment_first = first
        self._segment = storage.AppendFile(self.log_dir / storage.segment_name(first), durable=self.options.durable)
        if self.options.durable:
            storage.fsync_dir(self.log_dir)

    def close(self) -> None:
        if self.writable and self._since_checkpoint:
            self.checkpoint()
        for handle in (self._segment, self._leaves, self._checkpoint_file):
            if handle is not None:
                handle.close()
        if hasattr(self, "index"):
            self.index.close()
        self._pool.shutdown(wait=True)
        self.writable = False

    # Appending -------------------------------------------------------------------

    def _system_event(self, event_type: str, details: Mapping[str, object]) -> audit_pb2.AuditEvent:
        return build_event(event_type, source=self.source, details=details)

    def _genesis(self) -> None:
        first = self.keys.keys[0]
        details = {
            "log_id": self.log_id,
            "key_id": first.key_id,
            "public_key": base64.b64encode(raw_public(first.public)).decode(),
            "format": canonical.FORMAT_VERSION,
        }
        self.append([self._system_event(GENESIS_TYPE, details)])
        self.checkpoint()

    def known(self, event_ids: Iterable[str]) -> set[str]:
        return self.index.known(event_ids)

    def append(self, events: Sequence[audit_pb2.AuditEvent]) -> list[audit_pb2.AuditEvent]:
        """Append validated, deduplicated events; durable when this returns."""
        if not self.writable:
            raise InvalidArgumentError("this audit log is open read-only")
        if not events:
            return []
        key = self.keys.current
        private = key.private
        assert private is not None
        chain_hash = self.head_chain
        leaves: list[bytes] = []
        pending: list[concurrent.futures.Future[list[bytes]]] = []
        for start in range(0, len(events), SIGN_CHUNK):
            chunk = events[start : start + SIGN_CHUNK]
            for sequence, event in enumerate(chunk, start=self.size + start):
                event.sequence = sequence
                leaf = canonical.leaf_hash(event)
                chain_hash = canonical.chain(chain_hash, leaf)
                event.chain_hash = chain_hash
                event.key_id = key.key_id
                leaves.append(leaf)
            # Sign this chunk on the pool while the next one is hashed here.
            inputs = [canonical.event_signing_input(event.chain_hash) for event in chunk]
            pending.append(self._pool.submit(lambda data: [private.sign(d) for d in data], inputs))
        signatures = [signature for future in pending for signature in future.result()]
        for event, signature in zip(events, signatures, strict=True):
            event.signature = signature
        rows = self._write(events)
        assert self._leaves is not None
        for leaf in leaves:
            self._leaves.append(leaf)
            self.tree.append(leaf)
        self._leaves.sync()
        self.index.add(rows)
        self.head_chain = chain_hash
        self._since_checkpoint += len(events)
        if self.checkpoint_due():
            self.checkpoint()
        return list(events)

    def _write(self, events: Sequence[audit_pb2.AuditEvent]) -> list[tuple[audit_pb2.AuditEvent, int, int]]:
        rows = []
        assert self._segment is not None
        for event in events:
            record = storage.frame(event.SerializeToString())
            if self._segment.size and self._segment.size + len(record) > self.options.segment_bytes:
                self._segment.sync()
                self._open_segment(event.sequence)
            rows.append((event, self._segment_first, self._segment.append(record)))
        self._segment.sync()
        return rows

    def checkpoint_due(self) -> bool:
        if not self._since_checkpoint:
            return False
        elapsed = time.monotonic() - self._checkpoint_at
        return self._since_checkpoint >= self.options.checkpoint_every or elapsed >= self.options.checkpoint_interval_s

    def checkpoint(self) -> audit_pb2.Checkpoint:
        """Sign and store a checkpoint of the whole log as it stands."""
        key = self.keys.current
        cp = audit_pb2.Checkpoint(
            log_id=self.log_id,
            tree_size=self.size,
            root_hash=self.tree.root(),
            last_chain_hash=self.head_chain,
            key_id=key.key_id,
        )
        cp.timestamp.seconds, cp.timestamp.nanos = divmod(time.time_ns(), 1_000_000_000)
        cp.signature = self.keys.sign(canonical.checkpoint_body(cp))
        assert self._checkpoint_file is not None
        self._checkpoint_file.append(storage.frame(cp.SerializeToString()))
        self._checkpoint_file.sync()
        self.checkpoints.append(cp)
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic()
        return cp

    def rotate_key(self, reason: str = "") -> tuple[SigningKey, SigningKey, audit_pb2.AuditEvent]:
        """New signing key: recorded in the log, signed by the outgoing key, then used."""
        old = self.keys.current
        new = self.keys.new_key()
        details = {
            "previous_key_id": old.key_id,
            "new_key_id": new.key_id,
            "new_public_key": base64.b64encode(raw_public(new.public)).decode(),
            "reason": reason,
        }
        (event,) = self.append([self._system_event(ROTATION_TYPE, details)])
        self.keys.activate(new)
        self.checkpoint()
        return old, new, event

    # Reading ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Follow a log another process writes: new leaves, checkpoints and keys."""
        if self.writable:
            return  # the writer's own view is always current
        leaves = storage.read_leaves(self.directory / "leaves.bin")
        if len(leaves) < self.size * storage.LEAF_SIZE:  # the writer repaired a torn tail: start over
            self.tree = MerkleTree()
        for start in range(self.size * storage.LEAF_SIZE, len(leaves), storage.LEAF_SIZE):
            self.tree.append(leaves[start : start + storage.LEAF_SIZE])
        self._load_checkpoints(repair_tail=False)
        self.keys = KeyRing.open(self.directory / "keys", create=False)

    def read(self, locations: Iterable[Location]) -> list[audit_pb2.AuditEvent]:
        out = []
        handles: dict[int, BinaryIO] = {}
        try:
            for loc in locations:
                f = handles.get(loc.segment)
                if f is None:
                    f = handles[loc.segment] = open(self.log_dir / storage.segment_name(loc.segment), "rb")  # noqa: SIM115
                f.seek(loc.offset)
                length, _ = storage.HEADER.unpack(f.read(storage.HEADER.size))
                out.append(audit_pb2.AuditEvent.FromString(f.read(length)))
        finally:
            for f in handles.values():
                f.close()
        return out

    def event(self, sequence: int) -> audit_pb2.AuditEvent:
        loc = self.index.locate(sequence)
        if loc is None:
            raise NotFoundError(f"no audit event at sequence {sequence}")
        return self.read([loc])[0]

    def event_by_id(self, event_id: str) -> audit_pb2.AuditEvent:
        loc = self.index.by_event_id(event_id)
        if loc is None:
            raise NotFoundError(f"no audit event {event_id}")
        return self.read([loc])[0]

    def events(self, start: int = 0, end: int | None = None) -> Iterator[audit_pb2.AuditEvent]:
        """Events [start, end) in order, straight from the segments."""
        end = self.size if end is None else end
        for _, path in storage.segments(self.log_dir):
            for item in storage.read_records(path):
                if isinstance(item, storage.BadRecord):
                    return
                event = audit_pb2.AuditEvent.FromString(item[1])
                if event.sequence >= end:
                    return
                if event.sequence >= start:
                    yield event

    def checkpoint_for(self, tree_size: int = 0) -> audit_pb2.Checkpoint:
        """The latest checkpoint, or the one of exactly ``tree_size``."""
        if not self.checkpoints:
            raise NotFoundError("the log has no checkpoint yet")
        if tree_size == 0:
            return self.checkpoints[-1]
        for cp in reversed(self.checkpoints):
            if cp.tree_size == tree_size:
                return cp
        raise NotFoundError(f"no checkpoint of tree size {tree_size}")

    def signing_keys(self) -> list[audit_pb2.SigningKey]:
        return [key.message() for key in self.keys.keys]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
