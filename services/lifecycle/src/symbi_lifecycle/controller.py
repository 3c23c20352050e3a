"""The lifecycle controller: create, move and terminate agents, one checked transition at a time.

Creation: the definition is parsed and checked (nothing is stored if it has an
error), the policy service decides ``agent_create``, then the record is stored in
INITIALIZING with a fresh identity; the agent's inline policies are registered and
it becomes READY (or FAILED, with the reason, if they cannot be). Every transition
is checked against ``states``, written with optimistic concurrency, audited and
announced (``events``).

Side effects on tasks go through the scheduler (``TaskControl``): suspending holds
the agent's task (stopped, confirmed), resuming releases it, terminating cancels
every task and returns only once the running one is confirmed stopped. A running
agent is terminated via SUSPENDED, as the design has no RUNNING -> TERMINATED edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from symbi_common.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    SymbiError,
    UnavailableError,
)
from symbi_common.ids import new_id, parse_id
from symbi_common.policy_client import Principal, Target, request
from symbi_lifecycle import definitions, events, states
from symbi_lifecycle.definitions.render import render
from symbi_lifecycle.identity import new_identity
from symbi_lifecycle.store import AgentStore, Outbound, Stored
from symbi_proto.v1 import agent_pb2, common_pb2, policy_pb2, scheduler_pb2

log = logging.getLogger(__name__)

S = agent_pb2
MAX_PAGE = 1000
CONFLICT_RETRIES = 5


class PolicyAdmin(Protocol):
    """What the lifecycle needs of the policy service (``PolicyClient`` is one)."""

    async def check(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision: ...

    async def register(self, text: str, *, name: str = ...) -> policy_pb2.RegisterPolicyResponse: ...

    async def delete(self, policy_id: str, *, reason: str = ...) -> int: ...


class TaskControl(Protocol):
    """What the lifecycle needs of the scheduler: hold, release or cancel an agent's tasks."""

    async def agent_tasks(
        self, request: scheduler_pb2.AgentTasksRequest, timeout_s: float
    ) -> scheduler_pb2.AgentTasksResponse: ...


@dataclass(frozen=True, slots=True)
class LifecycleOptions:
    source: str
    extra_capabilities: tuple[str, ...] = ()
    stop_timeout_s: float = 30.0
    default_grace_s: float = 10.0


class Controller:
    def __init__(
        self,
        store: AgentStore,
        publisher: events.TransitionEvents,
        policy: PolicyAdmin,
        tasks: TaskControl,
        options: LifecycleOptions,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.policy = policy
        self.tasks = tasks
        self.options = options
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def _agent_lock(self, agent_id: str) -> AsyncIterator[None]:
        """Serialise this replica's operations on one agent (other replicas: revisions)."""
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(agent_id) is lock:
                del self._locks[agent_id]

    # Creation -----------------------------------------------------------------------

    def validate(self, req: agent_pb2.CreateAgentRequest) -> definitions.Built:
        """The checked definition of a create request (from source text, or a definition re-checked)."""
        if req.WhichOneof("spec") == "source":
            return definitions.load(req.source, extra_capabilities=self.options.extra_capabilities)
        if req.WhichOneof("spec") == "definition":
            text = render(req.definition)
            source = agent_pb2.DefinitionSource(format=S.DEFINITION_FORMAT_DSL, text=text, name="definition")
            return definitions.load(source, extra_capabilities=self.options.extra_capabilities)
        raise InvalidArgumentError("a create request carries a definition or its source text")

    async def create(self, req: agent_pb2.CreateAgentRequest) -> agent_pb2.CreateAgentResponse:
        built = self.validate(req)
        response = agent_pb2.CreateAgentResponse(issues=built.issues)
        if not built.ok or req.validate_only:
            return response
        if req.idempotency_key:
            made = await self.store.idempotent(req.idempotency_key)
            if made is not None:
                response.agent.CopyFrom((await self.store.get(made)).record)
                return response
        definition = built.definition
        await self.policy.check(_create_request(definition, req.requested_by, req.requester_roles))
        agent_id = new_id()
        identity, private = new_identity()
        record = agent_pb2.AgentRecord(
            agent_id=agent_id, definition=definition, state=S.AGENT_STATE_INITIALIZING, revision=1, identity=identity
        )
        _stamp(record.created_at)
        record.updated_at.CopyFrom(record.created_at)
        transition = self._transition(
            record, S.AGENT_STATE_UNSPECIFIED, S.TRANSITION_CAUSE_UNSPECIFIED, "created", req.requested_by
        )
        outbound = events.pack(transition, events.audit_event(transition, record, self.options.source))
        try:
            await self.store.create(record, transition, outbound, private, idempotency=req.idempotency_key)
        except SymbiError as exc:
            if req.idempotency_key and exc.metadata.get("agent_id") and "idempotency" in exc.message:
                response.agent.CopyFrom((await self.store.get(exc.metadata["agent_id"])).record)  # a concurrent retry
                return response
            raise
        await self._announce(outbound)
        async with self._agent_lock(agent_id):
            stored = await self._initialize(Stored(record, 1), built)
        response.agent.CopyFrom(stored.record)
        return response

    async def _initialize(self, stored: Stored, built: definitions.Built | None = None) -> Stored:
        """INITIALIZING -> READY once the inline policies are registered; -> FAILED if they cannot be."""
        record = stored.record
        if built is None:
            built = definitions.load(record.definition.source, extra_capabilities=self.options.extra_capabilities)
        generated = definitions.policy_for(built, record.agent_id) if built.ok else None
        to, cause, reason = S.AGENT_STATE_READY, S.TRANSITION_CAUSE_VALIDATED, "definition valid"
        updated = _copy(record)
        if not built.ok:
            to, cause = S.AGENT_STATE_FAILED, S.TRANSITION_CAUSE_VALIDATION_FAILED
            reason = f"the stored definition no longer validates: {built.issues[0].message}"
        elif generated is not None:
            policy_id, text = generated
            try:
                await self.policy.register(text, name=f"agent {record.definition.metadata.name} ({record.agent_id})")
            except SymbiError as exc:
                to, cause = S.AGENT_STATE_FAILED, S.TRANSITION_CAUSE_VALIDATION_FAILED
                reason = f"cannot register the agent's inline policies: {exc.message}"
            else:
                for inline in updated.definition.policies:
                    inline.registered_policy_id = policy_id
                reason = f"definition valid; inline policies registered as {policy_id}"
        return await self._commit(stored, updated, to, cause, reason, self.options.source)

    # Transitions --------------------------------------------------------------------

    async def transition(self, req: agent_pb2.TransitionAgentRequest) -> agent_pb2.TransitionAgentResponse:
        agent_id = parse_id(req.agent_id, what="agent_id")
        if req.to_state == S.AGENT_STATE_TERMINATED:
            raise InvalidArgumentError("use symbi.lifecycle.terminate to terminate an agent (it confirms the stop)")
        async with self._agent_lock(agent_id):
            for attempt in range(CONFLICT_RETRIES):
                stored = await self.store.get(agent_id)
                if req.expected_revision and stored.revision != req.expected_revision:
                    raise ConflictError(
                        f"agent {agent_id} is at revision {stored.revision}, not {req.expected_revision}",
                        metadata={"revision": str(stored.revision)},
                    )
                try:
                    return await self._apply(stored, req)
                except ConflictError as exc:
                    if (
                        req.expected_revision
                        or "changed meanwhile" not in exc.message
                        or attempt == CONFLICT_RETRIES - 1
                    ):
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _apply(self, stored: Stored, req: agent_pb2.TransitionAgentRequest) -> agent_pb2.TransitionAgentResponse:
        record = stored.record
        current, to, cause = record.state, req.to_state, req.cause
        if to == S.AGENT_STATE_RUNNING and cause == S.TRANSITION_CAUSE_TASK_ASSIGNED:
            if not req.task_id:
                raise InvalidArgumentError("a task assignment names its task_id")
            if current == S.AGENT_STATE_RUNNING and record.current_task_id == req.task_id:
                return agent_pb2.TransitionAgentResponse(agent=record)  # a repeated assignment: nothing changes
        states.check(current, to, cause)
        updated = _copy(record)
        if current == S.AGENT_STATE_RUNNING and to == S.AGENT_STATE_READY:
            if req.task_id != record.current_task_id:
                raise ConflictError(
                    f"task {req.task_id or '(none)'} is not the agent's current task ({record.current_task_id})"
                )
            updated.current_task_id = ""
            _add_usage(updated.usage, req.usage)
        elif to == S.AGENT_STATE_RUNNING and current == S.AGENT_STATE_READY:
            updated.current_task_id = req.task_id
        elif to == S.AGENT_STATE_SUSPENDED:
            if cause == S.TRANSITION_CAUSE_RESOURCE_LIMIT:
                _add_usage(updated.usage, req.usage)
            await self._stop(record, scheduler_pb2.AGENT_TASKS_ACTION_HOLD, req.reason or "suspended", req.actor)
        reason = req.reason or states.cause_name(cause)
        done = await self._commit(stored, updated, to, cause, reason, req.actor, task_id=req.task_id)
        if current == S.AGENT_STATE_SUSPENDED and to == S.AGENT_STATE_RUNNING:
            await self._release(done.record, req.actor)
        transition, _ = await self.store.history(record.agent_id, -1, 1)
        return agent_pb2.TransitionAgentResponse(agent=done.record, transition=transition[0] if transition else None)

    async def _stop(
        self, record: agent_pb2.AgentRecord, action: int, reason: str, actor: str, grace_s: float = 0
    ) -> str:
        """Ask the scheduler to hold/cancel the agent's tasks; '' once confirmed, else why not."""
        message = scheduler_pb2.AgentTasksRequest(
            agent_id=record.agent_id,
            action=action,  # type: ignore[arg-type]
            reason=reason,
            requested_by=actor,
        )
        message.grace_period.FromNanoseconds(int((grace_s or self.options.default_grace_s) * 1e9))
        try:
            reply = await self.tasks.agent_tasks(message, self.options.stop_timeout_s)
        except SymbiError as exc:
            if not record.current_task_id and action == scheduler_pb2.AGENT_TASKS_ACTION_CANCEL:
                # Nothing runs for it; a queued task is refused when it is placed (the agent is terminated).
                log.info("agent %s has no task; scheduler unreachable (%s)", record.agent_id, exc.message)
                return ""
            if action == scheduler_pb2.AGENT_TASKS_ACTION_HOLD:
                raise UnavailableError(f"cannot suspend agent {record.agent_id}: {exc.message}") from exc
            return f"the scheduler did not confirm the stop: {exc.message}"
        if reply.stopped:
            return ""
        detail = reply.detail or "the task's worker did not confirm the stop"
        if action == scheduler_pb2.AGENT_TASKS_ACTION_HOLD:
            raise UnavailableError(f"cannot suspend agent {record.agent_id}: {detail}")
        return detail

    async def _release(self, record: agent_pb2.AgentRecord, actor: str) -> None:
        detail = await self._stop(record, scheduler_pb2.AGENT_TASKS_ACTION_RELEASE, "resumed", actor)
        if detail:  # the scheduler also releases held tasks of running agents on its own
            log.warning("agent %s resumed but its task is not released yet: %s", record.agent_id, detail)

    # Termination --------------------------------------------------------------------

    async def terminate(self, req: agent_pb2.TerminateAgentRequest) -> agent_pb2.TerminateAgentResponse:
        agent_id = parse_id(req.agent_id, what="agent_id")
        cause = req.cause or S.TRANSITION_CAUSE_OVERRIDE
        if cause not in (S.TRANSITION_CAUSE_OVERRIDE, S.TRANSITION_CAUSE_SHUTDOWN):
            raise InvalidArgumentError("an agent is terminated by override or shutdown")
        reason = req.reason or states.cause_name(cause)
        grace = req.grace_period.ToNanoseconds() / 1e9 if req.HasField("grace_period") else 0.0
        async with self._agent_lock(agent_id):
            stored = await self.store.get(agent_id)
            record = stored.record
            if record.state == S.AGENT_STATE_TERMINATED:
                return agent_pb2.TerminateAgentResponse(agent=record, task_stopped=True)
            if record.state == S.AGENT_STATE_INITIALIZING:
                raise ConflictError(f"agent {agent_id} is still initializing; terminate it once it is ready or failed")
            detail = await self._stop(record, scheduler_pb2.AGENT_TASKS_ACTION_CANCEL, reason, req.actor, grace)
            if record.state == S.AGENT_STATE_RUNNING:
                why = f"terminating: {reason}" if not detail else f"termination pending: {detail}"
                stored = await self._commit(
                    stored, _copy(record), S.AGENT_STATE_SUSPENDED, S.TRANSITION_CAUSE_OVERRIDE, why, req.actor
                )
            if detail:
                return agent_pb2.TerminateAgentResponse(agent=stored.record, task_stopped=False, detail=detail)
            final = _copy(stored.record)
            final.current_task_id = ""
            stored = await self._commit(
                stored, final, S.AGENT_STATE_TERMINATED, cause, reason, req.actor, free_name=True
            )
        await self._drop_policies(stored.record)
        history, _ = await self.store.history(agent_id, -1, 1)
        return agent_pb2.TerminateAgentResponse(agent=stored.record, transition=history[0], task_stopped=True)

    async def _drop_policies(self, record: agent_pb2.AgentRecord) -> None:
        for policy_id in sorted({p.registered_policy_id for p in record.definition.policies if p.registered_policy_id}):
            try:
                await self.policy.delete(policy_id, reason=f"agent {record.agent_id} terminated")
            except NotFoundError:
                pass
            except SymbiError as exc:
                log.warning("cannot delete policy %s yet (%s); will retry", policy_id, exc.message)
                await self.store.add_policy_cleanup(policy_id)

    async def retry_policy_cleanup(self) -> int:
        done = 0
        for policy_id in await self.store.policy_cleanups():
            try:
                await self.policy.delete(policy_id, reason="its agent was terminated")
            except NotFoundError:
                pass
            except SymbiError:
                continue
            await self.store.policy_cleaned(policy_id)
            done += 1
        return done

    # Reads --------------------------------------------------------------------------

    async def get(self, agent_id: str) -> agent_pb2.AgentRecord:
        return (await self.store.get(parse_id(agent_id, what="agent_id"))).record

    async def list(self, req: agent_pb2.ListAgentsRequest) -> agent_pb2.ListAgentsResponse:
        size = min(req.page.page_size or 100, MAX_PAGE)
        after = req.page.page_token
        if after:
            after = parse_id(after, what="page_token")
        wanted = {int(state) for state in req.states}
        out = agent_pb2.ListAgentsResponse()
        while len(out.agents) < size:
            ids = await self.store.page(after, size)
            if not ids:
                after = ""
                break
            for record in await self.store.get_many(ids):
                after = record.agent_id
                if _matches(record, req, wanted):
                    if req.omit_definitions:
                        _summarise(record)
                    out.agents.append(record)
                    if len(out.agents) == size:
                        break
            if len(ids) < size and len(out.agents) < size:
                after = ""
                break
        out.page.next_page_token = after if len(out.agents) == size else ""
        out.page.total_size = await self.store.count()
        return out

    async def history(self, req: agent_pb2.AgentHistoryRequest) -> agent_pb2.AgentHistoryResponse:
        agent_id = parse_id(req.agent_id, what="agent_id")
        await self.store.get(agent_id)
        start = int(req.page.page_token or 0)
        size = min(req.page.page_size or 100, MAX_PAGE)
        transitions, total = await self.store.history(agent_id, start, size)
        response = agent_pb2.AgentHistoryResponse(transitions=transitions)
        response.page.total_size = total
        if start + size < total:
            response.page.next_page_token = str(start + size)
        return response

    async def identity(self, agent_id: str) -> agent_pb2.GetAgentIdentityResponse:
        record = await self.get(agent_id)
        return agent_pb2.GetAgentIdentityResponse(
            agent_id=record.agent_id, identity=record.identity, state=record.state
        )

    async def state_counts(self) -> dict[int, int]:
        every = [v for v in agent_pb2.AgentState.values() if v]
        return await self.store.counts(every)

    # Recovery -----------------------------------------------------------------------

    async def recover(self) -> tuple[int, int]:
        """After a restart: send what the outbox still holds, finish interrupted initialisations."""
        sent = await self.publisher.flush()
        resumed = 0
        for agent_id in await self.store.ids_in_state(S.AGENT_STATE_INITIALIZING):
            async with self._agent_lock(agent_id):
                stored = await self.store.get(agent_id)
                if stored.record.state == S.AGENT_STATE_INITIALIZING:
                    await self._initialize(stored)
                    resumed += 1
        return sent, resumed

    # Writing ------------------------------------------------------------------------

    def _transition(
        self, record: agent_pb2.AgentRecord, frm: int, cause: int, reason: str, actor: str, task_id: str = ""
    ) -> agent_pb2.StateTransition:
        transition = agent_pb2.StateTransition(
            agent_id=record.agent_id,
            from_state=frm,  # type: ignore[arg-type]
            to_state=record.state,
            cause=cause,  # type: ignore[arg-type]
            reason=reason,
            actor=actor or self.options.source,
            task_id=task_id or record.current_task_id,
            revision=record.revision,
            event_id=new_id(),
        )
        transition.time.CopyFrom(record.updated_at)
        return transition

    async def _commit(
        self,
        stored: Stored,
        updated: agent_pb2.AgentRecord,
        to: int,
        cause: int,
        reason: str,
        actor: str,
        *,
        task_id: str = "",
        free_name: bool = False,
    ) -> Stored:
        before = stored.record.state
        updated.state = to  # type: ignore[assignment]
        updated.state_reason = reason
        updated.revision = stored.revision + 1
        _stamp(updated.updated_at)
        transition = self._transition(updated, before, cause, reason, actor, task_id)
        outbound = events.pack(transition, events.audit_event(transition, updated, self.options.source))
        done = await self.store.update(stored, updated, transition, outbound, free_name=free_name)
        await self._announce(outbound)
        return done

    async def _announce(self, outbound: Outbound) -> None:
        try:
            await self.publisher.publish(outbound)
        except SymbiError as exc:  # stays in the outbox; the periodic flush sends it
            log.warning("transition event %s queued for retry: %s", outbound.event_id, exc.message)


def _create_request(
    definition: agent_pb2.AgentDefinition, requested_by: str, roles: Sequence[str]
) -> policy_pb2.EvaluateRequest:
    options = definition.options
    who = Principal("user" if requested_by else "service", requested_by or "lifecycle", tenant=definition.tenant,
                    roles=list(roles))  # fmt: skip
    return request(
        "agent_create",
        who,
        Target(
            "agent",
            definition.metadata.name,
            tenant=definition.tenant,
            attributes={
                "capabilities": list(definition.capabilities),
                "version": definition.metadata.version,
                "network": options.network_access,
                "memory_mb": int(options.limits.memory_mb),
                "cpu_cores": float(options.limits.cpu_cores),
                "inline_policies": len(definition.policies),
            },
        ),
        operation="create",
    )


def _copy(record: agent_pb2.AgentRecord) -> agent_pb2.AgentRecord:
    """A copy to change, so a failed write leaves the record read as it was."""
    out = agent_pb2.AgentRecord()
    out.CopyFrom(record)
    return out


def _stamp(ts: Message) -> None:
    ts.seconds, ts.nanos = divmod(time.time_ns(), 1_000_000_000)  # type: ignore[attr-defined]


def _add_usage(total: common_pb2.TaskResourceUsage, more: common_pb2.TaskResourceUsage) -> None:
    total.cpu_seconds += more.cpu_seconds
    total.memory_peak_bytes = max(total.memory_peak_bytes, more.memory_peak_bytes)
    for name in ("disk_read_bytes", "disk_write_bytes", "network_rx_bytes", "network_tx_bytes"):
        setattr(total, name, getattr(total, name) + getattr(more, name))
    total.pids_peak = max(total.pids_peak, more.pids_peak)
    total.wall_time.FromNanoseconds(total.wall_time.ToNanoseconds() + more.wall_time.ToNanoseconds())


def _matches(record: agent_pb2.AgentRecord, req: agent_pb2.ListAgentsRequest, wanted: set[int]) -> bool:
    if wanted and record.state not in wanted:
        return False
    if req.tenant and record.definition.tenant != req.tenant:
        return False
    return not req.name_prefix or record.definition.metadata.name.startswith(req.name_prefix)


def _summarise(record: agent_pb2.AgentRecord) -> None:
    meta = agent_pb2.AgentMetadata()
    meta.CopyFrom(record.definition.metadata)
    tenant = record.definition.tenant
    record.ClearField("definition")
    record.definition.metadata.CopyFrom(meta)
    record.definition.tenant = tenant


__all__ = ["Controller", "LifecycleOptions", "PolicyAdmin", "TaskControl"]
