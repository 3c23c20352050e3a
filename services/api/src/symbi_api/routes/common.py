"""What the route modules share: id patterns, the page parameters, agent visibility by tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict

from symbi_api.keys import ApiKey
from symbi_api.runtime import Api
from symbi_common.errors import NotFoundError
from symbi_proto.v1 import agent_pb2

MAX_UINT = 2**63 - 1
"""Upper bound of counters, sequences and versions taken from callers (int64)."""
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

AgentId = Annotated[str, Path(pattern=ID_PATTERN, description="an agent id")]
PageSize = Annotated[int, Query(ge=1, le=500, description="items per page")]
PageToken = Annotated[str, Query(max_length=512, description="next_page_token of the previous page")]

JsonObject = dict[str, Any]


class Body(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error rather than ignored."""

    model_config = ConfigDict(extra="forbid")


async def visible_agent(api: Api, caller: ApiKey, agent_id: str) -> agent_pb2.AgentRecord:
    """The agent's record, if the key may see it: a key with a tenant sees only its tenant's agents.

    Another tenant's agent is reported exactly like a missing one (404)."""
    record = await api.lifecycle(caller).get(agent_id)
    if caller.tenant and record.definition.tenant != caller.tenant:
        raise NotFoundError(f"no agent {agent_id}")
    return record
