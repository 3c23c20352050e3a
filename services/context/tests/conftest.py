"""Context test setup: the real policy and lifecycle services, and the context service, in-process.

``context_stack`` starts the policy service with ``POLICIES``, the lifecycle service
(agents are created through it, so the context service looks them up for real) and
the context service on the session's NATS and Redis. Qdrant runs in local mode in
the test's state directory, or on the server named by ``--qdrant-url`` /
``SYMBI_TEST_QDRANT_URL`` / ``QDRANT_URL`` (each test then gets its own collection
prefix, and its collections are deleted afterwards).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import register_policies
from symbi_testing.fixtures import RunService

from symbi_common import natsio, subjects
from symbi_common.lifecycle_client import LifecycleClient
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_context.service import SPEC as CONTEXT
from symbi_lifecycle.service import SPEC as LIFECYCLE
from symbi_policy.service import SPEC as POLICY
from symbi_proto.v1 import agent_pb2

POLICIES = """
id: context-tests
rules:
  - name: testers-create
    effect: allow
    actions: [agent_create]
    when: subject.id == "tester"
  - name: own-memory
    effect: allow
    actions: [data_access]
    operations: [read, write, delete]
    resources: [memory, working]
    when: resource.owner == subject.id
  - name: read-knowledge
    effect: allow
    actions: [data_access]
    operations: [read]
    resources: [knowledge]
  - name: publish-knowledge
    effect: allow
    actions: [data_access]
    operations: [write, delete]
    resources: [knowledge]
    when: subject.capabilities contains "shared_knowledge"
  - name: owners-delete
    effect: deny
    actions: [data_access]
    operations: [delete]
    resources: ["knowledge:?*"]
    when: resource.owner != subject.id
    reason: only its writer deletes a piece of shared knowledge
  - name: pii-needs-clearance
    effect: deny
    actions: [data_access]
    operations: [read]
    resources: [knowledge]
    when: resource.labels contains "pii" and not (subject.capabilities contains "read_pii")
    reason: pii knowledge needs the read_pii capability
  - name: quarantined-tenant
    effect: deny
    actions: [data_access]
    resources: [knowledge]
    when: subject.tenant == "quarantine"
    reason: tenant quarantine has no shared knowledge
"""


def manifest(name: str, *, tenant: str = "t1", capabilities: tuple[str, ...] = ("read_memory",)) -> str:
    return json.dumps(
        {
            "metadata": {"name": name, "version": "1.0.0"},
            "capabilities": list(capabilities),
            "tenant": tenant,
            "with": {"sandbox": "Tier1", "timeout": "30s", "memory": "128MB"},
            "task": {"command": ["python3", "-c", "print(1)"]},
        }
    )


@dataclass
class ContextStack:
    nc: Client
    settings: Settings
    runner: ServiceRunner
    run_service: RunService
    lifecycle: LifecycleClient
    agents: dict[str, str] = field(default_factory=dict)

    async def agent(self, name: str, **kw: Any) -> str:
        source = agent_pb2.DefinitionSource(
            format=agent_pb2.DEFINITION_FORMAT_JSON, text=manifest(name, **kw), name=f"{name}.json"
        )
        reply = await self.lifecycle.create_from(source)
        assert not reply.issues, reply.issues
        self.agents[name] = reply.agent.agent_id
        return reply.agent.agent_id

    async def call(self, operation: str, request: Any, response: Any, timeout: float = 20) -> Any:
        return await natsio.request(self.nc, subjects.context(operation), request, response, timeout=timeout)

    async def restart(self, **overrides: Any) -> None:
        """Stop the context service and start a new replica on the same state (Qdrant dir, Redis).

        ``overrides``: ``[context]`` settings for the new replica (``llm_model="m"``, ...).
        """
        await self.runner.shutdown()
        if overrides:
            self.settings = self.settings.with_overrides({f"context.{k}": v for k, v in overrides.items()})
        self.runner = await self.run_service(CONTEXT, self.settings)


async def start_policy(run_service: RunService, settings: Settings) -> str:
    runner = await run_service(POLICY, settings)
    return await register_policies(runner, POLICIES, "context-tests.yaml")


def context_settings(settings: Settings, addr: str, url: str) -> Settings:
    overrides: dict[str, Any] = {
        "policy.addr": addr,
        "policy.cache_size": 0,
        "lifecycle.extra_capabilities": ("read_pii",),
        "context.vector_db_url": url,
        "context.collection_prefix": f"t{secrets.token_hex(4)}",
    }
    return settings.with_overrides(overrides)


@pytest_asyncio.fixture
async def context_stack(
    qdrant_url: str,
    run_service: RunService,
    settings: Settings,
    nc: Client,
    fresh_redis: None,
    fresh_policy_log: None,
) -> AsyncIterator[ContextStack]:
    url = qdrant_url
    wired = context_settings(settings, await start_policy(run_service, settings), url)
    await run_service(LIFECYCLE, wired)
    runner = await run_service(CONTEXT, wired)
    stack = ContextStack(nc, wired, runner, run_service, LifecycleClient(nc, actor="tester", timeout_s=10))
    try:
        yield stack
    finally:
        if url:
            await drop_collections(url, wired.context.collection_prefix)


async def drop_collections(url: str, prefix: str) -> None:
    from qdrant_client import AsyncQdrantClient

    client = AsyncQdrantClient(url=url, timeout=10)
    try:
        for kind in ("long_term", "working", "shared_knowledge"):
            await client.delete_collection(f"{prefix}_{kind}")
    finally:
        await client.close()
