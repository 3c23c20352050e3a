"""Version monotonicity, as a property: any sequence of changes on two real replicas."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from symbi_testing.streams import delete_stream

from symbi_common import natsio, subjects
from symbi_common.errors import NotFoundError
from symbi_common.settings import NatsSettings
from symbi_policy.compiler import compile_sources
from symbi_policy.replication import PolicyStore

pytestmark = pytest.mark.integration

ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "delete"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 2),  # text variant
        st.integers(0, 1),  # which replica makes the change
    ),
    min_size=1,
    max_size=12,
)


def text(policy_id: str, variant: int) -> str:
    return f"id: {policy_id}\nrules:\n  - {{name: r, effect: allow, actions: [admin], priority: {variant}}}\n"


async def scenario(nats_url: str, changes: list[tuple[str, str, int, int]]) -> None:
    nc = await natsio.connect(NatsSettings(url=nats_url), "versions")
    try:
        await delete_stream(nc, subjects.POLICY_STREAM)
        js = nc.jetstream(timeout=5)
        stores = [PolicyStore(js, nc, instance_id=f"r{i}", metrics=CollectorRegistry()) for i in range(2)]
        for store in stores:
            await store.start()
        set_version = 0
        current: dict[str, tuple[int, int]] = {}  # id -> (version, variant)
        highest: dict[str, int] = {}
        for op, policy_id, variant, who in changes:
            store = stores[who]
            if op == "register":
                (compiled,) = compile_sources(text(policy_id, variant), f"{policy_id}.yaml")
                change = await store.register(compiled)
                if current.get(policy_id, (0, -1))[1] == variant:
                    assert change.unchanged
                    assert change.policy_set_version == set_version
                    continue
                set_version += 1
                highest[policy_id] = highest.get(policy_id, 0) + 1
                current[policy_id] = (highest[policy_id], variant)
                assert change.policy is not None
                assert change.policy.version == highest[policy_id]  # never reused, even after a delete
            elif policy_id in current:
                change = await store.delete(policy_id)
                set_version += 1
                del current[policy_id]
            else:
                with pytest.raises(NotFoundError):
                    await store.delete(policy_id)
                continue
            assert change.policy_set_version == set_version  # one version per effective change
        for store in stores:
            await store.catch_up()
            assert store.version == set_version
            assert {pid: p.version for pid, p in store.current.policies.items()} == {
                pid: version for pid, (version, _) in current.items()
            }
            for history in store.history.values():
                assert sorted(history) == list(range(1, len(history) + 1))
        for store in stores:
            await store.stop()
    finally:
        await delete_stream(nc, subjects.POLICY_STREAM)
        await nc.close()


Change = tuple[str, str, int, int]


@given(ops)
@settings(max_examples=15, deadline=None)
def test_versions_rise_by_one_per_change_and_replicas_agree(nats_url: str, changes: list[Change]) -> None:
    asyncio.run(scenario(nats_url, changes))
