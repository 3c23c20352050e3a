"""The state machine: exactly the design's edges, and no sequence of calls leaves them.

The stateful property drives the real controller over real Redis and NATS
(JetStream for audit) with random operations, and checks after every step that
each stored record and its history are a walk along the design's edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from symbi_common import natsio
from symbi_common.audit_events import AuditPublisher
from symbi_common.errors import ConflictError, SymbiError
from symbi_common.settings import NatsSettings
from symbi_lifecycle import states
from symbi_lifecycle.controller import Controller, LifecycleOptions
from symbi_lifecycle.events import TransitionEvents
from symbi_lifecycle.store import AgentStore
from symbi_proto.v1 import agent_pb2, policy_pb2, scheduler_pb2

from .conftest import simple

S = agent_pb2
STATES = [v for v in agent_pb2.AgentState.values() if v]
CAUSES = [v for v in agent_pb2.TransitionCause.values() if v]
# The design (design.md section 2), written out independently of states.TRANSITIONS.
DESIGN = {
    ("initializing", "ready"),
    ("initializing", "failed"),
    ("ready", "running"),
    ("running", "ready"),
    ("running", "suspended"),
    ("suspended", "running"),
    ("suspended", "terminated"),
    ("ready", "terminated"),
    ("failed", "terminated"),
}


def test_the_edges_are_exactly_the_designs() -> None:
    edges = {(states.name(a), states.name(b)) for a, b in states.TRANSITIONS}
    assert edges == DESIGN
    for frm, to, cause in itertools.product(STATES, STATES, CAUSES):
        allowed = cause in states.TRANSITIONS.get((frm, to), frozenset())
        if allowed:
            states.check(frm, to, cause)
        else:
            with pytest.raises(ConflictError):
                states.check(frm, to, cause)


def test_refusals_say_what_is_possible() -> None:
    with pytest.raises(ConflictError, match=r"cannot go from failed to ready \(from failed: terminated\)"):
        states.check(S.AGENT_STATE_FAILED, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_VALIDATED)
    with pytest.raises(ConflictError, match="never changes state again"):
        states.check(S.AGENT_STATE_TERMINATED, S.AGENT_STATE_READY, S.TRANSITION_CAUSE_OVERRIDE)


class AllowAll:
    async def check(self, request: policy_pb2.EvaluateRequest) -> policy_pb2.PolicyDecision:
        return policy_pb2.PolicyDecision(allow=policy_pb2.Allow())

    async def register(self, text: str, *, name: str = "") -> policy_pb2.RegisterPolicyResponse:
        return policy_pb2.RegisterPolicyResponse()

    async def delete(self, policy_id: str, *, reason: str = "") -> int:
        return 0


class Tasks:
    """The scheduler's side: confirms or not, as the test decides."""

    def __init__(self) -> None:
        self.confirm = True

    async def agent_tasks(
        self, request: scheduler_pb2.AgentTasksRequest, timeout_s: float
    ) -> scheduler_pb2.AgentTasksResponse:
        return scheduler_pb2.AgentTasksResponse(stopped=self.confirm, detail="" if self.confirm else "not yet")


@pytest.mark.integration
@pytest.mark.usefixtures("fresh_redis", "fresh_audit_streams")
def test_no_sequence_of_calls_reaches_an_illegal_state(nats_url: str, redis_url: str) -> None:
    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.redis = aioredis.Redis.from_url(redis_url)
            self.nc = self.run(natsio.connect(NatsSettings(url=nats_url), "states-test"))
            self.store = AgentStore(self.redis)
            publisher = TransitionEvents(self.nc, AuditPublisher(self.nc.jetstream(), "test"), self.store)
            self.tasks = Tasks()
            self.controller = Controller(self.store, publisher, AllowAll(), self.tasks, LifecycleOptions("test"))
            self.agents: list[str] = []
            self.names = itertools.count()
            self.tasks_made = itertools.count()

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            self.run(self.redis.flushdb())
            self.run(self.nc.close())
            self.run(self.redis.aclose())
            self.loop.close()

        def attempt(self, coro: Any) -> None:
            with contextlib.suppress(SymbiError):  # refused: the invariants check nothing moved illegally
                self.run(coro)

        @initialize()
        def two_agents(self) -> None:
            self.create()
            self.create()

        @rule()
        def create(self) -> None:
            reply = self.run(
                self.controller.create(agent_pb2.CreateAgentRequest(source=simple(f"a{next(self.names)}")))
            )
            self.agents.append(reply.agent.agent_id)

        @rule(data=st.data(), to=st.sampled_from(STATES), cause=st.sampled_from(CAUSES), same_task=st.booleans())
        def transition(self, data: st.DataObject, to: int, cause: int, same_task: bool) -> None:
            if not self.agents:
                return
            agent_id = data.draw(st.sampled_from(self.agents))
            current = self.run(self.store.get(agent_id)).record
            task_id = current.current_task_id if same_task and current.current_task_id else f"t{next(self.tasks_made)}"
            request = agent_pb2.TransitionAgentRequest(agent_id=agent_id, to_state=to, cause=cause, task_id=task_id)  # type: ignore[arg-type]
            self.attempt(self.controller.transition(request))

        @rule(data=st.data())
        def assign_and_complete(self, data: st.DataObject) -> None:
            if not self.agents:
                return
            agent_id = data.draw(st.sampled_from(self.agents))
            task = f"t{next(self.tasks_made)}"
            for to, cause in ((S.AGENT_STATE_RUNNING, S.TRANSITION_CAUSE_TASK_ASSIGNED),
                              (S.AGENT_STATE_READY, S.TRANSITION_CAUSE_TASK_COMPLETED)):  # fmt: skip
                request = agent_pb2.TransitionAgentRequest(agent_id=agent_id, to_state=to, cause=cause, task_id=task)
                self.attempt(self.controller.transition(request))

        @rule(
            data=st.data(),
            to=st.sampled_from([S.AGENT_STATE_SUSPENDED, S.AGENT_STATE_RUNNING]),
            cause=st.sampled_from([S.TRANSITION_CAUSE_POLICY_VIOLATION, S.TRANSITION_CAUSE_RESOURCE_LIMIT,
                                   S.TRANSITION_CAUSE_OVERRIDE, S.TRANSITION_CAUSE_CLEARED]),
        )  # fmt: skip
        def suspend_or_resume(self, data: st.DataObject, to: int, cause: int) -> None:
            agent_id = data.draw(st.sampled_from(self.agents))
            request = agent_pb2.TransitionAgentRequest(agent_id=agent_id, to_state=to, cause=cause)  # type: ignore[arg-type]
            self.attempt(self.controller.transition(request))

        @rule(data=st.data(), confirm=st.booleans())
        def terminate(self, data: st.DataObject, confirm: bool) -> None:
            if not self.agents:
                return
            self.tasks.confirm = confirm
            agent_id = data.draw(st.sampled_from(self.agents))
            self.attempt(self.controller.terminate(agent_pb2.TerminateAgentRequest(agent_id=agent_id)))
            self.tasks.confirm = True

        @invariant()
        def every_record_is_a_walk_along_the_design(self) -> None:
            for agent_id in self.agents:
                record = self.run(self.store.get(agent_id)).record
                history, total = self.run(self.store.history(agent_id, 0, 10_000))
                assert total == len(history) == record.revision
                assert history[0].from_state == S.AGENT_STATE_UNSPECIFIED
                assert history[0].to_state == S.AGENT_STATE_INITIALIZING
                for step in history[1:]:
                    assert (states.name(step.from_state), states.name(step.to_state)) in DESIGN
                for earlier, later in itertools.pairwise(history):
                    assert earlier.to_state == later.from_state
                    assert later.revision == earlier.revision + 1
                assert history[-1].to_state == record.state
                assert bool(record.current_task_id) == (record.state in states.WITH_TASK)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
