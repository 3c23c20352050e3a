"""What a scenario script is given: its agents, and one method per thing an agent does.

A scenario is a Python file with ``TITLE`` and ``async def run(scenario)``. Each action
(``ingest``, ``ask``, ``send``, ``request``, ``publish``, ``tool``, ``run_task``,
``suspend``, ...) goes through the real services exactly as an agent runtime's would:
messages over the bus as the agent's own broker user, tools through the MCP gateway,
memory and questions through the context service, tasks through the scheduler into a
sandbox. Each action is one *step*: it runs in its own trace (so every service's audit
events of it carry the step's trace id), its correlation ids are noted, and what
happened is printed as it happens. ``expect`` records checks; a scenario whose checks
fail ends with exit code 1. After the script, ``evidence`` proves each step's audit
events.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg

from symbi_common import audit_events, natsio, subjects, telemetry
from symbi_common.bus.client import AgentBus
from symbi_common.context_client import ContextClient
from symbi_common.envelope import Opened
from symbi_common.errors import AlreadyExistsError, ConflictError, DeadlineExceededError, SymbiError, UnavailableError
from symbi_common.ids import new_id
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.policy_client import PolicyClient
from symbi_common.retry import RetryPolicy, retry
from symbi_common.scheduler_client import SchedulerClient
from symbi_common.settings import Settings
from symbi_common.tools_client import ToolsClient
from symbi_proto.v1 import agent_pb2, context_pb2, message_pb2, task_pb2, tools_pb2

A, M, T = agent_pb2, message_pb2, task_pb2
FINAL = (T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED, T.TASK_STATE_REJECTED)
FORMATS = {".symbi": A.DEFINITION_FORMAT_DSL, ".yaml": A.DEFINITION_FORMAT_YAML, ".yml": A.DEFINITION_FORMAT_YAML,
           ".toml": A.DEFINITION_FORMAT_TOML, ".json": A.DEFINITION_FORMAT_JSON}  # fmt: skip
ACTOR = "scenario-runner"
R = TypeVar("R")
# A request in flight when its service dies is lost: each call waits CALL_TIMEOUT_S at most, and
# is made again (for up to two minutes) while the service restarts.
CALL_TIMEOUT_S = 20.0
TRANSIENT = RetryPolicy(deadline_s=120.0, max_backoff_s=2.0, retry_on=(UnavailableError, DeadlineExceededError))


@dataclass
class Step:
    name: str
    ok: bool = True
    detail: str = ""
    trace_id: str = ""
    correlation_ids: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0


@dataclass
class Agent:
    name: str
    agent_id: str
    tenant: str
    bus: AgentBus


class Scenario:
    def __init__(self, nc: Client, settings: Settings, root: Path, say: Callable[[str], None]) -> None:
        self.nc = nc
        self.settings = settings
        self.root = root
        self.say = say
        self.run_id = new_id()
        self.lifecycle = LifecycleClient(nc, actor=ACTOR, roles=("operator",), timeout_s=CALL_TIMEOUT_S / 2)
        self.scheduler = SchedulerClient(nc, actor=ACTOR, timeout_s=CALL_TIMEOUT_S)
        self.context = ContextClient(nc, timeout_s=CALL_TIMEOUT_S)
        self.steps: list[Step] = []
        self.checks: list[tuple[bool, str]] = []
        self.agents: dict[str, Agent] = {}
        self._created: dict[str, Agent] = {}
        self.outputs: dict[str, list[str]] = {}

    # -- set-up -----------------------------------------------------------------------

    async def policies(self, *files: str) -> None:
        """Register the scenario's own policies (next to whatever the stack already has)."""
        client = PolicyClient(self.settings.policy.addr, timeout_s=10)
        try:
            for name in files:
                path = self.root / name
                async with self.step(f"register policy {path.name}") as step:
                    await client.register(path.read_text(), name=path.name)
                    step.detail = "registered"
        finally:
            await client.close()

    async def agent(self, definition: str, *, topics: Iterable[str] = ()) -> Agent:
        """Create an agent from a definition file (one left over from an earlier run is retired first)."""
        path = self.root / definition
        source = A.DefinitionSource(format=FORMATS[path.suffix], text=path.read_text(), name=path.name)
        async with self.step(f"create agent from {path.name}") as step:
            reply = await self.again(f"create {path.name}", lambda: self._create(source, f"{self.run_id}:{path.name}"))
            if reply.issues:
                problems = "; ".join(f"{i.location.line}:{i.location.column} {i.message}" for i in reply.issues)
                raise SymbiError(f"{path.name} is not valid: {problems}")
            record = reply.agent
            step.correlation_ids.append(record.agent_id)
            await self._until(lambda: self._state_is(record.agent_id, A.AGENT_STATE_READY), 30, "agent ready")
            request = M.BusCredentialsRequest(agent_id=record.agent_id, topics=list(topics), requested_by=ACTOR)
            creds = await self.again(
                "credentials",
                lambda: natsio.request(
                    self.nc, subjects.BUS_CREDENTIALS, request, M.BusCredentials, timeout=CALL_TIMEOUT_S
                ),
            )
            bus = await AgentBus.connect(self.settings.nats, creds, self.settings.messaging)
            agent = Agent(record.definition.metadata.name, record.agent_id, record.definition.tenant, bus)
            self.agents[agent.name] = agent
            self._created[path.stem] = agent
            user = creds.permissions.user or "none (broker without authentication)"
            step.detail = f"{agent.name} ({agent.agent_id}, tenant {agent.tenant}) READY; broker user {user[:12]}"
            step.facts = {"agent_id": agent.agent_id, "broker_user": creds.permissions.user}
        if path.stem not in self._created:
            raise SymbiError(f"the scenario needs the agent of {path.name}: {self.steps[-1].detail}")
        return self._created[path.stem]

    async def _create(self, source: agent_pb2.DefinitionSource, key: str) -> agent_pb2.CreateAgentResponse:
        try:
            return await self.lifecycle.create_from(source, idempotency_key=key)
        except AlreadyExistsError as exc:  # an earlier run did not finish: retire its agent, then create again
            old = exc.metadata.get("agent_id", "")
            if not old:
                raise
            self.say(f"    (retiring agent {old}, left over from an earlier run)")
            await self.lifecycle.terminate(old, reason="left over from an earlier scenario run")
            return await self.lifecycle.create_from(source, idempotency_key=key)

    async def close(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                await agent.bus.close()

    # -- steps --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[Step]:
        """One action: its own trace, its outcome printed; an error fails the step, not the run."""
        step = Step(name, started=time.time())
        self.steps.append(step)
        with telemetry.tracer().start_as_current_span(f"scenario: {name}"):
            step.trace_id = audit_events.current_trace_id()
            try:
                yield step
            except SymbiError as exc:
                step.ok, step.detail = False, f"{type(exc).__name__}: {exc.message}"
            except TimeoutError:
                step.ok, step.detail = False, "timed out"
        step.ended = time.time()
        mark = "ok  " if step.ok else "FAIL"
        self.say(f"  {mark} {name}: {step.detail}")

    def expect(self, condition: bool, what: str) -> bool:
        self.checks.append((bool(condition), what))
        self.say(f"       {'✓' if condition else '✗'} {what}")
        return bool(condition)

    @property
    def failed(self) -> list[str]:
        return [what for ok, what in self.checks if not ok] + [f"step failed: {s.name}" for s in self.steps if not s.ok]

    async def again(self, what: str, fn: Callable[[], Awaitable[R]]) -> R:
        """Call ``fn``, again while a service is unavailable (restarting), as an agent runtime should."""
        return await retry(fn, TRANSIENT, what=what)

    async def _until(self, condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if await condition():
                    return
            except (UnavailableError, DeadlineExceededError):
                pass  # a service restarting: ask again
            if time.monotonic() > deadline:
                raise SymbiError(f"{what}: not within {timeout_s:.0f}s")
            await asyncio.sleep(0.1)

    async def _state_is(self, agent_id: str, state: int) -> bool:
        return (await self.lifecycle.get(agent_id)).state == state

    # -- knowledge ----------------------------------------------------------------------

    async def ingest(self, agent: Agent, pattern: str, *, labels: Iterable[str] = ("public",)) -> list[str]:
        """Ingest documents as shared knowledge written by ``agent``; returns their document ids."""
        files = sorted(Path(p) for p in glob.glob(str(self.root / pattern)))
        ids: list[str] = []
        async with self.step(f"{agent.name} ingests {len(files)} documents as shared knowledge") as step:
            chunks = 0
            for path in files:
                document = context_pb2.IngestDocumentRequest(
                    agent_id=agent.agent_id, kind=context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE, source=path.name,
                    media_type="text/markdown", content=path.read_bytes(), labels=list(labels),
                )  # fmt: skip
                reply = await self.again(f"ingest {path.name}", lambda d=document: self.context.ingest(d))  # type: ignore[misc]
                ids.append(reply.document_id)
                chunks += reply.chunks
            step.detail = f"{chunks} chunks from {', '.join(p.name for p in files)}"
            step.facts = {"documents": ids, "chunks": chunks}
        return ids

    async def ask(self, agent: Agent, question: str) -> context_pb2.RagAnswer:
        answer = context_pb2.RagAnswer()
        async with self.step(f"{agent.name} asks: {question}") as step:
            request = context_pb2.RagAskRequest(
                agent_id=agent.agent_id, question=question, mode=context_pb2.ANSWER_MODE_EXTRACTIVE,
                kinds=[context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE],
            )  # fmt: skip
            answer = await self.again("ask", lambda: self.context.ask(request))
            sources = sorted({c.source for c in answer.citations})
            step.detail = f"{len(answer.citations)} citations from {', '.join(sources)}: {answer.answer[:160]!r}"
            step.facts = {"citations": [c.source for c in answer.citations], "answer": answer.answer}
        return answer

    # -- messages -----------------------------------------------------------------------

    async def send(self, sender: Agent, recipient: Agent, text: str) -> message_pb2.SendResult:
        result = M.SendResult()
        async with self.step(f"{sender.name} sends {recipient.name} a message") as step:
            message = await self.again(
                "seal", lambda: sender.bus.seal_to(recipient.agent_id, text.encode(), content_type="text/plain")
            )
            result = await self._deliver(sender, message)
            step.correlation_ids.append(result.message_id)
            step.detail = _result(result)
            step.facts = {"message_id": result.message_id, "status": M.DeliveryStatus.Name(result.status)}
        return result

    async def publish(self, sender: Agent, topic: str, text: str) -> message_pb2.SendResult:
        result = M.SendResult()
        async with self.step(f"{sender.name} publishes on {topic}") as step:
            result = await self.again(
                "publish",
                lambda: _unless_unavailable(sender.bus.publish(topic, text.encode(), content_type="text/plain")),
            )
            step.correlation_ids.append(result.message_id)
            step.detail = _result(result)
        return result

    async def serve(self, agent: Agent, handler: Callable[[Opened], Awaitable[bytes]]) -> None:
        """Answer requests to ``agent`` with ``handler`` (run as that agent), until the scenario ends."""
        await agent.bus.serve_requests(handler)

    async def request(self, sender: Agent, recipient: Agent, text: str, *, timeout: float = 60) -> Opened | None:
        reply: Opened | None = None
        async with self.step(f"{sender.name} asks {recipient.name} over the bus") as step:
            reply = await self.again(
                "request", lambda: sender.bus.request(recipient.agent_id, text.encode(), timeout=timeout)
            )
            step.correlation_ids += [reply.header.correlation_id, reply.header.message_id]
            step.detail = f"reply {reply.header.message_id} from {recipient.name}: {reply.plaintext[:160]!r}"
        return reply

    # -- tools --------------------------------------------------------------------------

    async def tool(self, agent: Agent, server: str, name: str, arguments: dict[str, Any]) -> tools_pb2.ToolCallResult:
        result = tools_pb2.ToolCallResult()
        async with self.step(f"{agent.name} calls {server}/{name}") as step:
            tools = ToolsClient(self.nc, timeout_s=CALL_TIMEOUT_S, agent_id=agent.agent_id, actor=ACTOR)
            described = await self.again("list tools", lambda: _offered(tools, server, name))
            verification = (
                tools_pb2.VerificationStatus.Name(described.verification.status) if described else "NOT_OFFERED"
            )
            correlation = new_id()
            step.correlation_ids.append(correlation)
            result = await self.again(
                "tool call",
                lambda: _tool_unless_unavailable(tools.call(server, name, arguments, correlation_id=correlation)),
            )
            outcome = result.error.message if result.HasField("error") else _content(result)
            step.detail = f"schema {verification.removeprefix('VERIFICATION_STATUS_').lower()}; {outcome[:160]}"
            step.facts = {"verification": verification, "error": result.error.code, "is_error": result.is_error}
        return result

    # -- tasks --------------------------------------------------------------------------

    async def start_task(self, agent: Agent) -> str:
        """Schedule the agent's task; its output is collected as it runs."""
        task_id = ""
        async with self.step(f"{agent.name} is given a task") as step:
            key = f"{self.run_id}:task:{agent.agent_id}:{len(self.steps)}"
            scheduled = await self.again(
                "schedule", lambda: self.scheduler.schedule(agent.agent_id, idempotency_key=key)
            )
            task_id = scheduled.task_id
            self.outputs[task_id] = []
            await self.nc.subscribe(subjects.task_output(task_id), cb=self._collector(task_id))
            step.correlation_ids.append(task_id)
            task = (await self.again("get task", lambda: self.scheduler.get_task(task_id))).task
            step.detail = f"task {task_id} admitted, tier {_tier(task.tier)} (risk {task.risk.score:.2f})"
            step.facts = {"tier": _tier(task.tier), "risk": task.risk.score, "reason": task.risk.reason}
        return task_id

    def _collector(self, task_id: str) -> Callable[[Msg], Awaitable[None]]:
        async def collect(msg: Msg) -> None:
            chunk = T.TaskOutput.FromString(msg.data)
            self.outputs[task_id].append(chunk.data.decode("utf-8", "replace"))

        return collect

    async def wait_task(self, task_id: str, *states: int, timeout_s: float = 120) -> task_pb2.TaskStatus:
        wanted = states or FINAL
        status = T.TaskStatus()
        async with self.step(f"task {task_id} reaches {'/'.join(_state(s) for s in wanted)}") as step:

            async def reached() -> bool:
                nonlocal status
                status = await self.scheduler.get_task(task_id)
                return status.state in wanted

            await self._until(reached, timeout_s, f"task {task_id}")
            step.correlation_ids.append(task_id)
            report = status.report if status.HasField("report") else None
            where = f" on {report.node} under {report.runtime}" if report is not None and report.runtime else ""
            output = "".join(self.outputs.get(task_id, [])).strip()
            step.detail = f"{_state(status.state)}{where}" + (f"; output: {output[:200]!r}" if output else "")
            step.facts = {"state": _state(status.state), "runtime": report.runtime if report else "", "output": output}
        return status

    async def run_task(self, agent: Agent, *, timeout_s: float = 120) -> task_pb2.TaskStatus:
        return await self.wait_task(await self.start_task(agent), timeout_s=timeout_s)

    # -- lifecycle ----------------------------------------------------------------------

    async def suspend(self, agent: Agent, reason: str) -> None:
        async with self.step(f"{agent.name} is suspended") as step:
            reply = await self.again(
                "suspend",
                lambda: self.lifecycle.transition(
                    agent.agent_id, A.AGENT_STATE_SUSPENDED, A.TRANSITION_CAUSE_POLICY_VIOLATION, reason=reason
                ),
            )
            step.detail = f"{_agent_state(reply.transition.from_state)} -> SUSPENDED: {reason}"

    async def terminate(self, agent: Agent, reason: str) -> None:
        async with self.step(f"{agent.name} is terminated") as step:
            reply = await self.again("terminate", lambda: self._terminate(agent.agent_id, reason))
            stopped = "no task left running" if reply.task_stopped else "its task NOT confirmed stopped"
            step.detail = f"TERMINATED ({stopped})"

    async def _terminate(self, agent_id: str, reason: str) -> agent_pb2.TerminateAgentResponse:
        try:
            return await self.lifecycle.terminate(agent_id, reason=reason)
        except ConflictError:  # an earlier try got through before its reply was lost
            if (await self.lifecycle.get(agent_id)).state == A.AGENT_STATE_TERMINATED:
                return A.TerminateAgentResponse(task_stopped=True)
            raise

    async def _deliver(self, sender: Agent, message: message_pb2.SecureMessage) -> message_pb2.SendResult:
        """Send one envelope, the same one again while the router or its dependencies are unavailable."""
        return await self.again("send", lambda: _unless_unavailable(sender.bus.send_message(message)))

    async def history(self, agent: Agent) -> list[str]:
        transitions = await self.again("history", lambda: self.lifecycle.history(agent.agent_id))
        return [_agent_state(t.to_state) for t in transitions]


async def _offered(tools: ToolsClient, server: str, name: str) -> tools_pb2.ToolDescriptor | None:
    """The tool as offered to the agent; None when its server is up but does not offer it to it."""
    listing = await tools.list_tools(server)
    found = next((t for t in listing.tools if t.name == name), None)
    down = next((s for s in listing.unavailable_servers if s.name == server), None)
    if found is None and down is not None:  # (re)connecting: its tools are not known yet
        raise UnavailableError(f"server {server} is {down.detail or 'unavailable'}")
    return found


async def _unless_unavailable(sending: Awaitable[message_pb2.SendResult]) -> message_pb2.SendResult:
    """A refusal because something could not decide (fail closed) is worth trying again."""
    result = await sending
    if result.reason == M.MESSAGE_REJECT_REASON_UNAVAILABLE:
        raise UnavailableError(result.detail)
    return result


async def _tool_unless_unavailable(calling: Awaitable[tools_pb2.ToolCallResult]) -> tools_pb2.ToolCallResult:
    result = await calling
    if result.HasField("error") and result.error.code == "unavailable":
        raise UnavailableError(result.error.message)
    return result


def _result(result: message_pb2.SendResult) -> str:
    status = M.DeliveryStatus.Name(result.status).removeprefix("DELIVERY_STATUS_")
    if result.status == M.DELIVERY_STATUS_REJECTED:
        reason = M.MessageRejectReason.Name(result.reason).removeprefix("MESSAGE_REJECT_REASON_")
        return f"{status} {reason}: {result.detail}"
    return f"{status} {result.message_id} (decision {result.decision_id})"


def _content(result: tools_pb2.ToolCallResult) -> str:
    if result.structured_content_json:
        return f"result {json.loads(result.structured_content_json)}"
    return "result " + " ".join(c.text for c in result.content if c.text)


def _tier(tier: int) -> str:
    from symbi_proto.v1 import sandbox_pb2

    return sandbox_pb2.SandboxTier.Name(tier).removeprefix("SANDBOX_TIER_")  # type: ignore[arg-type]


def _state(state: int) -> str:
    return T.TaskState.Name(state).removeprefix("TASK_STATE_")  # type: ignore[arg-type]


def _agent_state(state: int) -> str:
    return A.AgentState.Name(state).removeprefix("AGENT_STATE_")  # type: ignore[arg-type]
