"""/v1/agents and /v1/tasks: create, list, read, run, suspend, resume, terminate, history.

Calls go to the lifecycle service and the scheduler over NATS, as the key's principal
(``requested_by`` and its roles: the lifecycle service decides ``agent_create`` with
them). Mutations are admitted by the guard first.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field, model_validator

from symbi_api.auth import require
from symbi_api.keys import ApiKey
from symbi_api.problems import ERROR_RESPONSES, error_response, request_id_of
from symbi_api.routes.common import ID_PATTERN, AgentId, Body, JsonObject, PageSize, PageToken, visible_agent
from symbi_api.runtime import Api, api, to_json
from symbi_common.errors import NotFoundError
from symbi_common.policy_client import Target
from symbi_proto.v1 import agent_pb2, common_pb2, task_pb2

router = APIRouter(prefix="/v1", tags=["agents"], responses=ERROR_RESPONSES)
Read = Annotated[ApiKey, Depends(require("agents:read"))]
Write = Annotated[ApiKey, Depends(require("agents:write"))]
TaskId = Annotated[str, Path(pattern=ID_PATTERN, description="a task id")]

FORMATS = {
    "dsl": agent_pb2.DEFINITION_FORMAT_DSL,
    "yaml": agent_pb2.DEFINITION_FORMAT_YAML,
    "toml": agent_pb2.DEFINITION_FORMAT_TOML,
    "json": agent_pb2.DEFINITION_FORMAT_JSON,
}
STATES = {
    agent_pb2.AgentState.Name(v).removeprefix("AGENT_STATE_").lower(): v for v in agent_pb2.AgentState.values() if v
}
StateName = Literal["initializing", "ready", "running", "suspended", "failed", "terminated"]
PRIORITIES = {
    task_pb2.TaskPriority.Name(v).removeprefix("TASK_PRIORITY_").lower(): v for v in task_pb2.TaskPriority.values() if v
}


class Source(Body):
    format: Literal["dsl", "yaml", "toml", "json"] = Field(description="the definition's language")
    text: str = Field(min_length=1, description="the definition itself")
    name: str = Field(default="", max_length=256, description="a file name, for error locations")


class CreateAgent(Body):
    source: Source | None = Field(default=None, description="a definition in the DSL, YAML, TOML or JSON")
    manifest: JsonObject | None = Field(default=None, description="a manifest as a JSON object (see docs/agents.md)")
    idempotency_key: str = Field(default="", max_length=128, description="the same key creates one agent only")
    validate_only: bool = Field(default=False, description="check the definition, create nothing")

    @model_validator(mode="after")
    def _one_definition(self) -> CreateAgent:
        if (self.source is None) == (self.manifest is None):
            raise ValueError("give exactly one of source and manifest")
        return self

    def definition(self) -> agent_pb2.DefinitionSource:
        if self.source is not None:
            return agent_pb2.DefinitionSource(
                format=FORMATS[self.source.format],
                text=self.source.text,
                name=self.source.name or f"api.{self.source.format}",
            )
        text = json.dumps(self.manifest)
        return agent_pb2.DefinitionSource(format=agent_pb2.DEFINITION_FORMAT_JSON, text=text, name="manifest.json")


class Reason(Body):
    reason: str = Field(default="", max_length=1024, description="recorded with the transition")


class Terminate(Reason):
    grace_s: float = Field(default=0, ge=0, le=3600, description="seconds between SIGTERM and SIGKILL")


class RunTask(Body):
    priority: Literal["low", "normal", "high", "critical"] | None = Field(
        default=None, description="default: the agent's"
    )
    idempotency_key: str = Field(default="", max_length=128, description="the same key queues one task only")


@router.post("/agents", status_code=201, summary="Create an agent from a definition or a manifest")
async def create_agent(body: CreateAgent, request: Request, caller: Write, a: Annotated[Api, Depends(api)]) -> Any:
    source = body.definition()
    lifecycle = a.lifecycle(caller)
    if not body.validate_only:
        await a.guard.admit(request, caller, "agents.create", Target("agent", attributes={"format": source.format}))
    reply = await lifecycle.create_from(source, validate_only=body.validate_only, idempotency_key=body.idempotency_key)
    issues = [to_json(issue) for issue in reply.issues]
    errors = [i for i in reply.issues if i.severity == common_pb2.ISSUE_SEVERITY_ERROR]
    if errors or (not reply.HasField("agent") and not body.validate_only):
        first = errors[0].message if errors else "the definition is not valid"
        return error_response(
            422, "invalid_argument", f"definition rejected: {first}", request_id_of(request), {"issues": issues}
        )
    if body.validate_only:
        return JSONResponse({"valid": True, "issues": issues}, status_code=200)
    return {"agent": to_json(reply.agent), "issues": issues}


@router.get("/agents", summary="List agents")
async def list_agents(
    caller: Read,
    a: Annotated[Api, Depends(api)],
    state: Annotated[list[StateName] | None, Query(description="only these states")] = None,
    tenant: Annotated[str, Query(max_length=128)] = "",
    name_prefix: Annotated[str, Query(max_length=128)] = "",
    page_size: PageSize = 100,
    page_token: PageToken = "",
) -> JsonObject:
    if caller.tenant:
        if tenant and tenant != caller.tenant:
            return {"agents": [], "next_page_token": ""}
        tenant = caller.tenant
    request = agent_pb2.ListAgentsRequest(
        states=[STATES[s] for s in state or ()], tenant=tenant, name_prefix=name_prefix, omit_definitions=False
    )
    request.page.page_size, request.page.page_token = page_size, page_token
    reply = await a.lifecycle(caller).list(request)
    return {"agents": [to_json(r) for r in reply.agents], "next_page_token": reply.page.next_page_token}


@router.get("/agents/{agent_id}", summary="One agent's record")
async def get_agent(agent_id: AgentId, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    return to_json(await visible_agent(a, caller, agent_id))


@router.get("/agents/{agent_id}/status", summary="An agent's state and its current task")
async def agent_status(agent_id: AgentId, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    record = await visible_agent(a, caller, agent_id)
    task: JsonObject | None = None
    if record.current_task_id:
        try:
            task = to_json(await a.scheduler(caller).get_task(record.current_task_id))
        except NotFoundError:
            task = None
    return {
        "agent_id": record.agent_id,
        "state": agent_pb2.AgentState.Name(record.state),
        "state_reason": record.state_reason,
        "revision": record.revision,
        "current_task": task,
    }


@router.get("/agents/{agent_id}/history", summary="Every state transition of an agent")
async def agent_history(agent_id: AgentId, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    return {"transitions": [to_json(t) for t in await a.lifecycle(caller).history(agent_id)]}


@router.post("/agents/{agent_id}/tasks", status_code=202, summary="Give an agent a task (queued by priority)")
async def run_task(
    agent_id: AgentId, body: RunTask, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "agents.run", Target("agent", agent_id))
    priority = PRIORITIES[body.priority] if body.priority else 0
    reply = await a.scheduler(caller).schedule(
        agent_id, priority=priority, idempotency_key=body.idempotency_key, tenant=caller.tenant
    )
    return to_json(reply)


@router.get("/agents/{agent_id}/tasks", summary="An agent's tasks")
async def agent_tasks(agent_id: AgentId, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    return {"tasks": [to_json(t) for t in await a.scheduler(caller).list_tasks(agent_id=agent_id)]}


@router.get("/tasks/{task_id}", summary="One task's status")
async def get_task(task_id: TaskId, caller: Read, a: Annotated[Api, Depends(api)]) -> JsonObject:
    task = await a.scheduler(caller).get_task(task_id)
    if caller.tenant:
        await visible_agent(a, caller, task.task.agent_id)
    return to_json(task)


@router.post("/agents/{agent_id}/suspend", summary="Suspend an agent (its task is stopped and held)")
async def suspend(
    agent_id: AgentId, body: Reason, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "agents.suspend", Target("agent", agent_id))
    return to_json(await a.lifecycle(caller).suspend(agent_id, body.reason))


@router.post("/agents/{agent_id}/resume", summary="Resume a suspended agent")
async def resume(
    agent_id: AgentId, body: Reason, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "agents.resume", Target("agent", agent_id))
    return to_json(await a.lifecycle(caller).resume(agent_id, body.reason))


@router.post("/agents/{agent_id}/terminate", summary="Terminate an agent; answers once its task is stopped")
async def terminate(
    agent_id: AgentId, body: Terminate, request: Request, caller: Write, a: Annotated[Api, Depends(api)]
) -> JsonObject:
    await visible_agent(a, caller, agent_id)
    await a.guard.admit(request, caller, "agents.terminate", Target("agent", agent_id))
    reply = await a.lifecycle(caller).terminate(agent_id, reason=body.reason, grace_s=body.grace_s)
    return to_json(reply)
