"""One writer at a time: a lease in NATS KV, fenced by a lock on the storage directory.

Replicas that share a storage directory (the only setup in which a standby can take
over the log) compete for the key ``writer`` in the KV bucket
``symbi_audit_writer``, whose entries expire ``ttl_s`` after their last write. The
holder renews every third of the TTL; if a renewal fails, or the holder has not
renewed within ``ttl_s`` less a safety margin by its own monotonic clock, it stops
writing at once. A standby creates the key when it is gone.

A lease alone cannot stop a writer that was paused and resumes unaware that its lease
expired; the second fence is an exclusive ``flock`` on ``<storage>/writer.lock``,
held for as long as this process writes. A paused process still holds the lock, so
a new lease holder cannot write until the old one has stopped (on the same host or
on a shared file system with working locks, such as NFSv4).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

BUCKET = "symbi_audit_writer"
KEY = "writer"


class WriterLease:
    def __init__(self, js: JetStreamContext, instance_id: str, storage: Path, *, ttl_s: float = 5.0) -> None:
        self.js = js
        self.instance_id = instance_id
        self.lock_path = storage / "writer.lock"
        self.ttl_s = ttl_s
        self.margin_s = max(0.5, ttl_s * 0.2)
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self._valid_until = 0.0
        self._lock_fd: int | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(bucket=BUCKET, ttl=self.ttl_s, history=1, storage=StorageType.FILE)
                self._kv = await self.js.create_key_value(config)
        return self._kv

    @property
    def held(self) -> bool:
        return self._revision is not None

    def valid(self) -> bool:
        """Whether this process may write right now (lease held and fresh, lock held)."""
        return self.held and self._lock_fd is not None and time.monotonic() < self._valid_until

    async def holder(self) -> str:
        try:
            entry = await (await self._bucket()).get(KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return ""
        return (entry.value or b"").decode()

    async def try_acquire(self) -> bool:
        kv = await self._bucket()
        started = time.monotonic()
        try:
            revision = await kv.create(KEY, self.instance_id.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        if not self._lock():
            log.warning("audit writer lease acquired but %s is locked by another process", self.lock_path)
            with contextlib.suppress(Exception):
                await kv.delete(KEY, last=revision)
            return False
        self._revision = revision
        self._valid_until = started + self.ttl_s - self.margin_s
        log.info("audit writer lease acquired by %s", self.instance_id)
        return True

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        kv = await self._bucket()
        started = time.monotonic()
        try:
            self._revision = await kv.update(KEY, self.instance_id.encode(), last=self._revision)
        except Exception as exc:
            log.error("audit writer lease lost (%r): stopping writes", exc)
            self._drop()
            return False
        self._valid_until = started + self.ttl_s - self.margin_s
        return True

    async def release(self) -> None:
        revision = self._revision
        self._drop()
        if revision is not None:
            with contextlib.suppress(Exception):
                await (await self._bucket()).delete(KEY, last=revision)

    def _drop(self) -> None:
        self._revision = None
        self._valid_until = 0.0
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> bool:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def keep_renewed(self) -> None:
        """Background task: renew every third of the TTL while the lease is held."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            if self.held:
                await self.renew()
