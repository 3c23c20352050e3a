"""Tier availability comes from the Docker daemon; without Docker it is said plainly."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from symbi_testing.checks import components, health_of
from symbi_testing.fixtures import RunService

from symbi_common.health import DEGRADED
from symbi_sandbox_orchestrator.runtimes import DockerProbe, probe_docker
from symbi_sandbox_orchestrator.service import SPEC


def test_probe_of_a_missing_daemon_is_unavailable(tmp_path: object) -> None:
    probe = probe_docker(f"unix://{tmp_path}/no-docker.sock")
    assert not probe.reachable
    assert probe.tiers == []
    assert probe.describe().startswith("Docker unavailable (")
    assert "no sandbox tier can run tasks" in probe.describe()


@pytest.mark.parametrize(
    ("runtimes", "tiers", "text"),
    [
        ({"runc"}, ["Tier1"], "tiers available: Tier1; unavailable: Tier2 needs runsc"),
        ({"runc", "runsc"}, ["Tier1", "Tier2"], "tiers available: Tier1, Tier2"),
        ({"runsc"}, ["Tier2"], "tiers available: Tier2; unavailable: Tier1 needs runc"),
    ],
)
def test_tiers_follow_registered_runtimes(runtimes: set[str], tiers: list[str], text: str) -> None:
    probe = DockerProbe(True, frozenset(runtimes), "Docker 28")
    assert probe.tiers == tiers
    assert probe.describe() == text


@pytest.mark.integration
async def test_service_without_docker_starts_degraded(
    run_service: RunService, nc: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    await run_service(SPEC)
    status = await health_of(nc, "sandbox-orchestrator")
    assert status.status == DEGRADED
    assert "Docker unavailable" in components(status)["docker"].detail
