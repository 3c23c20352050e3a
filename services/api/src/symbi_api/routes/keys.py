"""/v1/keys: API keys: create (the key is in the answer, once), list, revoke. Scope ``keys:admin``.

``symbi api-key create|list|revoke`` does the same against Redis directly, for
operators of the stack (and for the first key when there is no bootstrap key).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from symbi_api.auth import require
from symbi_api.keys import SCOPES, ApiKey, KeySpec
from symbi_api.problems import ERROR_RESPONSES
from symbi_api.routes.common import Body, JsonObject
from symbi_api.runtime import Api, api
from symbi_common.policy_client import Target

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)
Admin = Annotated[ApiKey, Depends(require("keys:admin"))]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="a key id (16 hex digits)")]


class NewKey(Body):
    name: str = Field(min_length=1, max_length=128, description="the principal the key acts as")
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES), description=", ".join(SCOPES))
    kind: Literal["user", "service"] = "user"
    roles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=32)
    tenant: str = Field(default="", max_length=128, description="confine the key to one tenant's agents and events")
    rate_limit_per_minute: int = Field(default=0, ge=0, le=1_000_000, description="0: the configured default")
    description: str = Field(default="", max_length=1024)


@router.get("", summary="Every API key (ids and what they may do; never the keys)")
async def list_keys(caller: Admin, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return {"keys": [k.public() for k in await a.keys.list()]}


@router.post("", status_code=201, summary="Create a key; the answer holds the key itself, shown this once")
async def create_key(body: NewKey, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]) -> JsonObject:
    spec = KeySpec(
        body.name, body.scopes, body.kind, body.roles, body.tenant, body.rate_limit_per_minute, body.description
    ).checked()
    await a.guard.admit(
        request,
        caller,
        "keys.create",
        Target("api_key", attributes={"name": spec.name, "scopes": list(spec.scopes), "roles": list(spec.roles)}),
    )
    record, token = await a.keys.create(spec, created_by=caller.name)
    return {"key": token, **record.public()}


@router.delete("/{key_id}", summary="Revoke a key (refused from then on, by every replica)")
async def revoke_key(key_id: KeyId, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]) -> JsonObject:
    await a.keys.get(key_id)
    await a.guard.admit(request, caller, "keys.revoke", Target("api_key", key_id))
    return (await a.keys.revoke(key_id, by=caller.name)).public()
