"""Dead letters: what could not be delivered or accepted, kept with the reason on the DEADLETTER stream.

Subjects under ``symbi.deadletter.>`` (``subjects.AUDIT_DEAD_LETTER``,
``subjects.MESSAGE_DEAD_LETTER``); each message is a ``symbi.v1.DeadLetter`` with the
original subject, payload, headers, the reason and the attempts made. Kept 30 days.
"""

from __future__ import annotations

from collections.abc import Mapping

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from symbi_common import natsio, subjects
from symbi_proto.v1 import common_pb2

STREAM = "DEADLETTER"


def stream_config() -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        subjects=[f"{subjects.PREFIX}.deadletter.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=30 * 24 * 3600.0,
    )


async def ensure_stream(js: JetStreamContext) -> None:
    await natsio.ensure_stream(js, stream_config())


def letter(
    subject: str,
    payload: bytes,
    code: str,
    message: str,
    *,
    rejected_by: str,
    headers: Mapping[str, str] | None = None,
    attempts: int = 1,
) -> common_pb2.DeadLetter:
    out = common_pb2.DeadLetter(
        subject=subject,
        payload=payload,
        error=common_pb2.ErrorDetail(code=code, message=message),
        rejected_by=rejected_by,
        headers=dict(headers or {}),
        attempts=attempts,
    )
    out.time.GetCurrentTime()
    return out
