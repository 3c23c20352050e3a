"""Working memory is cleared when its task ends: the real scheduler, worker and lifecycle events."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from symbi_testing.checks import eventually

from symbi_common import natsio, subjects
from symbi_common.policy_client import PolicyClient
from symbi_context.service import SPEC as CONTEXT
from symbi_context.stores import WORKING_TASKS
from symbi_proto.v1 import context_pb2 as C
from symbi_proto.v1 import task_pb2 as T

from .conftest import AgentStack

pytestmark = pytest.mark.integration

MEMORY_POLICY = """
id: context-memory
rules:
  - name: own-memory
    effect: allow
    actions: [data_access]
    operations: [read, write, delete]
    resources: [memory, working]
    when: resource.owner == subject.id
"""


async def note(stack: AgentStack, agent_id: str, task_id: str, text: str) -> str:
    item = C.ContextItem(kind=C.MEMORY_KIND_WORKING, content=text, task_id=task_id)
    reply = await natsio.request(stack.nc, subjects.context("store"), C.StoreContextRequest(agent_id=agent_id,
                                 item=item), C.StoreContextResponse, timeout=20)  # fmt: skip
    return str(reply.context_id)


async def scratch(stack: AgentStack, agent_id: str) -> set[str]:
    req = C.RetrieveContextRequest(agent_id=agent_id, query="scratch notes", kinds=[C.MEMORY_KIND_WORKING], limit=50)
    reply = await natsio.request(stack.nc, subjects.context("retrieve"), req, C.ContextSearchResponse, timeout=20)
    return {i.task_id for i in reply.items}


async def test_working_memory_ends_with_its_task(agent_stack: AgentStack) -> None:
    stack = agent_stack
    policy = PolicyClient(stack.settings.policy.addr)
    try:
        await policy.register(MEMORY_POLICY, name="context-memory.yaml")
    finally:
        await policy.close()
    context = await stack.run_service(CONTEXT, stack.settings)
    await stack.worker("w1")
    quick = await stack.agent("quick", seconds=1.0)
    slow = await stack.agent("slow", seconds=60)
    quick_task, slow_task = await stack.run(quick.agent_id), await stack.run(slow.agent_id)
    await stack.state(quick_task, T.TASK_STATE_RUNNING, timeout_s=10)
    await stack.state(slow_task, T.TASK_STATE_RUNNING, timeout_s=10)
    await note(stack, quick.agent_id, quick_task, "scratch: half-way through the quick task")
    await note(stack, slow.agent_id, slow_task, "scratch: the slow task's notes")
    assert await scratch(stack, quick.agent_id) == {quick_task}

    assert (await stack.final(quick_task)).state == T.TASK_STATE_SUCCEEDED
    await eventually(lambda: _empty(stack, quick.agent_id), timeout_s=10, what="the quick task's scratch is cleared")
    assert await scratch(stack, slow.agent_id) == {slow_task}  # a running task keeps its memory

    # A task the scheduler never heard of: no event will come; the sweep at start-up clears it.
    ghost = str(uuid.uuid4())
    await note(stack, slow.agent_id, ghost, "scratch: notes of a task that does not exist")
    assert await scratch(stack, slow.agent_id) == {slow_task, ghost}
    await context.shutdown()
    context = await stack.run_service(CONTEXT, stack.settings)

    def cleared(cause: str) -> float:
        return context.metrics.get_sample_value("symbi_context_working_cleared_total", {"cause": cause}) or 0.0

    await eventually(lambda: _tasks_are(stack, slow.agent_id, {slow_task}), timeout_s=10, what="the ghost is swept")
    assert cleared("sweep") == 1

    # Terminating the agent stops its task and ends all its working memory.
    await stack.lifecycle.terminate(slow.agent_id, reason="done", grace_s=0, timeout_s=30)
    assert (await stack.final(slow_task)).state == T.TASK_STATE_CANCELLED
    ends = ("task_report", "task_completed", "agent_terminated")  # whichever event is handled first clears it
    await eventually(lambda: sum(map(cleared, ends)) == 1, timeout_s=10, what="the slow task's scratch is cleared")
    assert not await _has_memory(stack, slow_task)


async def _empty(stack: AgentStack, agent_id: str) -> bool:
    return await scratch(stack, agent_id) == set()


async def _tasks_are(stack: AgentStack, agent_id: str, expected: set[str]) -> bool:
    return await scratch(stack, agent_id) == expected


async def _has_memory(stack: AgentStack, task_id: str) -> bool:
    """Whether the service still notes working memory for the task (a terminated agent can no longer ask)."""
    client = aioredis.Redis.from_url(stack.settings.redis.url)
    try:
        return bool(await client.hexists(WORKING_TASKS, task_id))
    finally:
        await client.aclose()
