"""The one image runs each service hardened, healthy over NATS, and stops cleanly.

The image is built here with no registry (``scripts/build-images.sh``: a debootstrap
base imported into Docker, then the Dockerfile), on the real Docker engine that
``scripts/docker-setup.sh`` provides.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from symbi_testing.checks import health_of

from symbi_common.health import SERVING
from symbi_common.ids import new_id

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.usefixtures("fresh_policy_log")]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "symbi:local"


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-images.sh"), "symbi", "--host-ca"],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    return IMAGE


@pytest_asyncio.fixture
async def container(image: str, nats_url: str, nc: Client) -> AsyncIterator[tuple[str, str]]:
    name = f"symbi-test-{new_id()[:8]}"
    started = docker(
        "run", "-d", "--rm", "--name", name, "--network", "host",
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/symbi:uid=10001,gid=10001",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", f"SYMBI_NATS_URL={nats_url}", "-e", "SYMBI_POLICY_PORT=0", "-e", "SYMBI_METRICS_PORT=0",
        image, "serve", "policy",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield name, started.stdout.strip()
    finally:
        docker("rm", "-f", name)


async def test_service_container_is_healthy_hardened_and_stops_cleanly(container: tuple[str, str], nc: Client) -> None:
    name, container_id = container
    deadline = time.monotonic() + 60
    last = "no reply yet"
    while True:  # health answers (NOT_SERVING) while the replica starts; wait until it is ready
        try:
            status = await health_of(nc, "policy")
        except Exception as exc:
            last = repr(exc)
        else:
            if status.status == SERVING:
                break
            last = f"status {status.status}"
        assert time.monotonic() < deadline, f"{last}\n" + docker("logs", name).stdout
        await asyncio.sleep(0.2)
    assert status.status == SERVING
    assert "grpc" in status.endpoints

    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    write = docker("exec", name, "sh", "-c", "touch /opt/symbi/x")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr

    wait = subprocess.Popen(["docker", "wait", container_id], stdout=subprocess.PIPE, text=True)
    assert docker("stop", "-t", "20", name).returncode == 0
    exit_code, _ = wait.communicate(timeout=30)
    assert exit_code.strip() == "0"  # SIGTERM is a graceful shutdown, not a kill
    assert docker("ps", "-aq", "--filter", f"name={name}").stdout.strip() == ""
