"""Helpers for audit tests: logs in temporary directories, events, the trusted key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from symbi_audit.log import AuditLog, LogOptions
from symbi_common.audit_events import build_event
from symbi_proto.v1 import audit_pb2


def events(n: int, *, prefix: str = "test.event", start: int = 0) -> list[audit_pb2.AuditEvent]:
    return [
        build_event(
            f"{prefix}",
            source="tests",
            agent_id=f"agent-{i % 3}",
            details={"n": i, "nested": {"list": [1, 2.5, "three", None, True]}},
            data_labels=["pii"] if i % 4 == 0 else [],
            correlation_id=f"corr-{i}",
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def audit_log(log_dir: Path) -> Iterator[AuditLog]:
    opened = AuditLog.open(log_dir, LogOptions(checkpoint_every=10, checkpoint_interval_s=3600))
    try:
        yield opened
    finally:
        if opened.writable:
            opened.close()


def first_key(audit_log: AuditLog) -> dict[str, Ed25519PublicKey]:
    first = audit_log.keys.keys[0]
    return {first.key_id: first.public}


MakeEvents = Callable[..., list[audit_pb2.AuditEvent]]
Trusted = Callable[[AuditLog], dict[str, Ed25519PublicKey]]


@pytest.fixture
def make_events() -> MakeEvents:
    """``make_events(n, start=0)``: n distinct test events, not yet appended."""
    return events


@pytest.fixture
def trusted_of() -> Trusted:
    """``trusted_of(log)``: what an auditor trusts, the log's first public key."""
    return first_key
