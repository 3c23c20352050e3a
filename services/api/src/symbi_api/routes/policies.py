"""/v1/policies: list, read, register, replace, delete; evaluate, explain and dry-run requests.

Calls go to the policy service over gRPC, recording the key's principal as who made
each change (``created_by``). A new or replaced policy is first checked by the policy
service (``validate_only``), which names the policy the guard is asked about; a
document with errors is 422 with every problem and its line and column.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES, error_response, request_id_of
from symbi_api.routes.common import MAX_UINT, Body, JsonObject
from symbi_api.runtime import Api, api, to_json
from symbi_common.policy_client import PolicyClient, Target, request_from_dict
from symbi_proto.v1 import common_pb2, policy_pb2

router = APIRouter(prefix="/v1/policies", tags=["policies"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("policies:read"))]
Admin = Annotated[ApiKey, Depends(require("policies:admin"))]
PolicyId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$", description="a policy id")]


class PolicyText(Body):
    text: str = Field(min_length=1, description="one policy document (docs/policy.md)")
    format: Literal["yaml", "json"] = "yaml"
    name: str = Field(default="api", max_length=256, description="a file name, for error locations")
    expected_version: int = Field(
        default=0, ge=0, le=MAX_UINT, description="policy-set version the change expects (0: any)"
    )
    validate_only: bool = False


class Who(Body):
    kind: Literal["agent", "user", "service"]
    id: str = Field(min_length=1, max_length=256)
    tenant: str = ""
    capabilities: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    attributes: JsonObject = Field(default_factory=dict)


class What(Body):
    type: str = Field(min_length=1, max_length=128)
    id: str = ""
    tenant: str = ""
    owner: str = ""
    labels: list[str] = Field(default_factory=list)
    sensitivity: Literal["", "public", "internal", "confidential", "restricted"] = ""
    attributes: JsonObject = Field(default_factory=dict)


class DecisionRequest(Body):
    """A request to decide, in the form of ``symbi policy eval`` (docs/policy.md)."""

    action: Literal["agent_create", "message_send", "resource_allocate", "tool_invoke", "data_access", "admin"]
    operation: str = ""
    subject: Who
    resource: What
    action_attributes: JsonObject = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    correlation_id: str = ""

    def message(self) -> policy_pb2.EvaluateRequest:
        return request_from_dict(self.model_dump())


class Candidate(Body):
    text: str = Field(min_length=1)
    format: Literal["yaml", "json"] = "yaml"
    name: str = "candidate"


class DryRun(Body):
    requests: list[DecisionRequest] = Field(min_length=1, max_length=10_000)
    candidates: list[Candidate] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list, description="policy ids dropped from the candidate set")
    replace_current: bool = Field(default=False, description="start the candidate set empty")


def _client(a: Api, caller: ApiKey) -> PolicyClient:
    return a.policy.acting_as(f"api:{caller.name}")


@router.get("", summary="The policies in force")
async def list_policies(caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return {"policies": [to_json(p) for p in await _client(a, caller).list()]}


@router.get("/{policy_id}", summary="One policy, with its source")
async def get_policy(
    policy_id: PolicyId,
    caller: Read,
    a: Annotated[Api, Depends(api)],
    version: Annotated[int, Query(ge=0, le=MAX_UINT, description="a past version (0: current)")] = 0,
) -> JsonObject:
    return to_json(await _client(a, caller).get(policy_id, version))


async def _register(body: PolicyText, request: Request, caller: ApiKey, a: Api, path_id: str = "") -> Any:
    client = _client(a, caller)
    checked = await client.register(body.text, name=body.name, fmt=body.format, validate_only=True)
    errors = [i for i in checked.issues if i.severity == common_pb2.ISSUE_SEVERITY_ERROR]
    issues = [to_json(i) for i in checked.issues]
    if errors or not checked.policy.id:
        first = errors[0].message if errors else "not a policy document"
        return error_response(
            422, "invalid_argument", f"policy rejected: {first}", request_id_of(request), {"issues": issues}
        )
    if path_id and checked.policy.id != path_id:
        message = f"the document's id is {checked.policy.id!r}, not {path_id!r} as in the path"
        return error_response(422, "invalid_argument", message, request_id_of(request))
    if body.validate_only:
        return JSONResponse({"valid": True, "policy": to_json(checked.policy), "issues": issues})
    await a.guard.admit(request, caller, "policies.register", Target("policy", checked.policy.id))
    reply = await client.register(body.text, name=body.name, fmt=body.format, expected_version=body.expected_version)
    return JSONResponse(to_json(reply), status_code=201 if not path_id else 200)


@router.post("", status_code=201, summary="Register a policy (a new one, or a new version of one)")
async def create_policy(body: PolicyText, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]) -> Any:
    return await _register(body, request, caller, a)


@router.put("/{policy_id}", summary="Replace a policy with a new version")
async def replace_policy(
    policy_id: PolicyId, body: PolicyText, request: Request, caller: Admin, a: Annotated[Api, Depends(api)]
) -> Any:
    await _client(a, caller).get(policy_id)  # 404 when there is nothing to replace
    return await _register(body, request, caller, a, policy_id)


@router.delete("/{policy_id}", summary="Remove a policy")
async def delete_policy(
    policy_id: PolicyId,
    request: Request,
    caller: Admin,
    a: Annotated[Api, Depends(api)],
    reason: Annotated[str, Query(max_length=1024, description="recorded in the audit trail")] = "",
    expected_version: Annotated[int, Query(ge=0, le=MAX_UINT)] = 0,
) -> JsonObject:
    client = _client(a, caller)
    await client.get(policy_id)
    await a.guard.admit(request, caller, "policies.delete", Target("policy", policy_id))
    version = await client.delete(policy_id, reason=reason, expected_version=expected_version)
    return {"deleted": policy_id, "policy_set_version": version}


@router.post("/evaluate", summary="Decide one request (nothing is enforced)")
async def evaluate(body: DecisionRequest, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return to_json(await _client(a, caller).evaluate(body.message()))


@router.post("/explain", summary="Decide one request and trace every rule considered")
async def explain(body: DecisionRequest, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return to_json(await _client(a, caller).explain(body.message()))


@router.post("/dry-run", summary="Compare current decisions with those of candidate policies")
async def dry_run(body: DryRun, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    candidates = [policy_pb2.PolicySource(text=c.text, format=c.format, name=c.name) for c in body.candidates]
    reply = await _client(a, caller).dry_run(
        [r.message() for r in body.requests], candidates, remove=body.remove, replace_current=body.replace_current
    )
    return to_json(reply)
