"""/v1/messaging: the message bus's counters and its dead letters (read only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import MAX_UINT, JsonObject
from symbi_api.runtime import Api, api, to_json
from symbi_common import deadletters, natsio, subjects
from symbi_proto.v1 import common_pb2, message_pb2

router = APIRouter(prefix="/v1/messaging", tags=["messaging"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("messaging:read"))]


@router.get("/stats", summary="Messages routed, refused (by reason) and dead-lettered")
async def stats(caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return to_json(await a.ask(subjects.BUS_STATS, message_pb2.BusStatsRequest(), message_pb2.MessagingStats))


@router.get("/dead-letters", summary="Messages that could not be delivered, oldest first (payloads omitted)")
async def dead_letters(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    from_sequence: Annotated[int, Query(ge=1, le=MAX_UINT, description="stream sequence to start at")] = 1,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JsonObject:
    js = a.nc.jetstream(timeout=a.timeout_s)
    letters: list[JsonObject] = []
    seq = from_sequence
    stored = natsio.stream_messages(
        js, deadletters.STREAM, subjects.MESSAGE_DEAD_LETTER, from_sequence=from_sequence, timeout=a.timeout_s
    )
    async for raw in stored:
        doc = to_json(common_pb2.DeadLetter.FromString(raw.data or b""))
        doc.pop("payload", None)
        doc["sequence"] = int(raw.seq or seq)
        letters.append(doc)
        seq = int(raw.seq or seq) + 1
        if len(letters) >= limit:
            break
    return {"dead_letters": letters, "next_sequence": seq}
