"""Append-only files: the event segments, the leaf hashes, the checkpoints.

Layout of ``SYMBI_AUDIT_STORAGE``::

    log/<first sequence, 20 digits>.seg   events, framed records (rotated at segment_bytes)
    leaves.bin                            32-byte leaf hashes, one per event (derived, rebuildable)
    checkpoints.log                       signed checkpoints, framed records
    keys/                                 signing keys (keys.py)
    index.sqlite                          query index (index.py; derived, rebuildable)
    log.json                              log id and format

A record is ``length (u32, big-endian) | CRC-32 of the payload (u32) | payload``.

**Durability.** The writer appends a whole batch of records, flushes and fsyncs
the segment (and, after a rotation, the directory) *before* it acknowledges the
batch to JetStream, so an acknowledged event is on disk; leaf hashes and the index
follow and are rebuilt from the segments if a crash left them behind. With
``[audit].fsync = "off"`` nothing is fsynced (an OS crash may then lose acknowledged
events; meant for throwaway test setups only).

**Torn writes.** On open, the last segment is scanned to its end. A record cut
short or failing its CRC *at the tail* is what a crash mid-write leaves: it is
truncated away (its event was never acknowledged, so JetStream redelivers it) and
the repair is reported. A bad record with valid data after it is not a torn write
but damage or tampering: the log refuses to open, pointing at it, so nothing
silently drops events (``symbi audit verify`` locates the damage).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from symbi_common.errors import ConfigError

HEADER = struct.Struct(">II")
MAX_RECORD_BYTES = 8 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
LEAF_SIZE = 32


class CorruptLog(ConfigError):
    """A record in the middle of a file is damaged: the log will not open until it is examined."""


@dataclass(frozen=True, slots=True)
class Repair:
    path: Path
    offset: int
    removed_bytes: int

    def __str__(self) -> str:
        return f"{self.path}: torn record at offset {self.offset} removed ({self.removed_bytes} bytes)"


@dataclass(frozen=True, slots=True)
class BadRecord:
    """Where reading stopped and why (used by the verifier)."""

    offset: int
    reason: str
    at_tail: bool


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path, start: int = 0) -> Iterator[tuple[int, bytes] | BadRecord]:
    """(offset, payload) for every record from ``start``; a ``BadRecord`` ends the iteration."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(start)
        offset = start
        while offset < size:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                yield BadRecord(offset, "record header cut short", True)
                return
            length, crc = HEADER.unpack(header)
            end = offset + HEADER.size + length
            if length > MAX_RECORD_BYTES:
                yield BadRecord(offset, f"record length {length} is not plausible", end >= size)
                return
            payload = f.read(length)
            if len(payload) < length:
                yield BadRecord(offset, "record cut short", True)
                return
            if zlib.crc32(payload) != crc:
                yield BadRecord(offset, "record CRC mismatch", end >= size)
                return
            yield offset, payload
            offset = end


def repair_tail(path: Path) -> Repair | None:
    """Truncate a torn last record; raise ``CorruptLog`` for damage before the tail."""
    for item in read_records(path):
        if isinstance(item, BadRecord):
            if not item.at_tail:
                raise CorruptLog(f"{path}: damaged record at offset {item.offset} ({item.reason}) with data after it")
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.truncate(item.offset)
                f.flush()
                os.fsync(f.fileno())
            return Repair(path, item.offset, size - item.offset)
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendFile:
    """One append-only file with explicit flush-and-fsync."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self.size = self._file.tell()

    def append(self, data: bytes) -> int:
        """Write ``data``; returns the offset it starts at."""
        offset = self.size
        self._file.write(data)
        self.size += len(data)
        return offset

    def sync(self) -> None:
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())

    def truncate(self, size: int) -> None:
        self._file.flush()
        self._file.truncate(size)
        self._file.seek(size)
        self.size = size
        self.sync()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}{SEGMENT_SUFFIX}"


def segments(log_dir: Path) -> list[tuple[int, Path]]:
    """(first sequence, path) of every segment, in order."""
    found = []
    for path in log_dir.glob(f"*{SEGMENT_SUFFIX}"):
        try:
            found.append((int(path.stem), path))
        except ValueError:
            continue
    return sorted(found)


def read_leaves(path: Path) -> bytes:
    """The leaf hashes, without a torn partial one at the end."""
    if not path.exists():
        return b""
    data = path.read_bytes()
    return data[: len(data) - len(data) % LEAF_SIZE]
