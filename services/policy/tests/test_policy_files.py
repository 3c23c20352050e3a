"""Policies from a directory: loaded at start, reloaded on change, broken files change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

from symbi_common import subjects
from symbi_common.policy_client import PolicyClient, Principal, Target, is_allowed, request
from symbi_common.service import ServiceRunner
from symbi_common.settings import Settings
from symbi_policy.service import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_policy_log")]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "policies"
SEARCH = request(
    "tool_invoke", Principal("agent", "a1", capabilities=["web_search"]), Target("tool", "search/web"), operation="call"
)


@pytest_asyncio.fixture
async def directory(nc: Client, tmp_path: Path) -> Path:
    """A fresh policy log and a directory holding the example policies."""
    target = tmp_path / "policies"
    shutil.copytree(EXAMPLES, target)
    return target


async def start(run_service: RunService, settings: Settings, directory: Path) -> tuple[ServiceRunner, PolicyClient]:
    runner = await run_service(
        SPEC, settings.with_overrides({"policy.directory": directory, "policy.reload_interval_s": 0.05})
    )
    assert runner.ctx is not None
    return runner, PolicyClient(runner.ctx.health.endpoints["grpc"], cache_size=0)


async def versions(client: PolicyClient) -> dict[str, int]:
    return {p.id: p.version for p in await client.list()}


async def test_files_are_loaded_watched_and_retired(
    run_service: RunService, settings: Settings, directory: Path
) -> None:
    (directory / "README.txt").write_text("not a policy")
    runner, client = await start(run_service, settings, directory)
    try:
        assert await versions(client) == {"platform-baseline": 1, "regulated-data": 1, "tools-default": 1}
        assert (await client.get("tools-default")).created_by == "file:tools.yaml"
        assert is_allowed(await client.evaluate(SEARCH))

        tools = directory / "tools.yaml"
        tools.write_text(tools.read_text().replace("limit: 60", "limit: 5"))
        await eventually(lambda: _version_is(client, "tools-default", 2), what="edited file reloaded")

        tools.write_text(tools.read_text().replace("effect: allow", "effect: permit", 1))  # broken
        await eventually(lambda: _has_error(runner, "tools.yaml:"), what="broken file reported")
        assert (await versions(client))["tools-default"] == 2  # the previous version stays in force
        assert is_allowed(await client.evaluate(SEARCH))

        tools.unlink()
        await eventually(lambda: _gone(client, "tools-default"), what="removed file retired")
        assert not is_allowed(await client.evaluate(SEARCH))
        assert set(await versions(client)) == {"platform-baseline", "regulated-data"}
    finally:
        await client.close()


async def _version_is(client: PolicyClient, policy_id: str, version: int) -> bool:
    return (await versions(client)).get(policy_id) == version


async def _gone(client: PolicyClient, policy_id: str) -> bool:
    return policy_id not in await versions(client)


async def _has_error(runner: ServiceRunner, needle: str) -> bool:
    snapshot = await runner.health.snapshot()
    return any(needle in e.message and "previous version stays in force" in e.message for e in snapshot.recent_errors)


async def test_replicas_sharing_a_directory_register_each_policy_once(
    run_service: RunService, settings: Settings, nc: Client, directory: Path
) -> None:
    _, first = await start(run_service, settings, directory)
    _, second = await start(run_service, settings, directory)
    try:
        assert await versions(first) == await versions(second)
        assert set((await versions(first)).values()) == {1}
        info = await nc.jetstream().stream_info(subjects.POLICY_STREAM)
        assert info.state.messages == 3
    finally:
        await first.close()
        await second.close()


async def test_a_restart_retires_policies_whose_file_went_away_meanwhile(
    run_service: RunService, settings: Settings, directory: Path
) -> None:
    runner, client = await start(run_service, settings, directory)
    await client.close()
    await runner.shutdown()
    (directory / "data-flow.yaml").unlink()
    _, client = await start(run_service, settings, directory)
    try:
        assert set(await versions(client)) == {"platform-baseline", "tools-default"}
    finally:
        await client.close()
