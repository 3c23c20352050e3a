"""`symbi up` brings every service up healthy and Ctrl-C leaves nothing running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from symbi_testing.up import READY_LINE, all_healthy, pid_alive, stack_env, symbi, wait_for_line

from symbi_common import catalog, natsio
from symbi_common.errors import PermissionDeniedError
from symbi_common.settings import NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

POLICIES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def test_up_status_and_clean_shutdown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = stack_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "symbi_cli", "up", "--state-dir", str(state), "--policies", str(POLICIES)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        output = wait_for_line(proc, READY_LINE, timeout_s=120)
        text = "\n".join(output)
        assert f"all {len(catalog.SERVICE_NAMES)} services ready" in text
        assert "Docker unavailable" in text  # a missing optional component is said plainly
        up = json.loads((state / "up.json").read_text())
        assert set(up["services"]) == set(catalog.SERVICE_NAMES)

        health = asyncio.run(all_healthy(up["nats_url"], up["nats_credentials"]))
        assert health == dict.fromkeys(catalog.SERVICE_NAMES, True)
        # The embedded broker authenticates: no credentials, no connection.
        assert "operator-mode authorization" in text
        with pytest.raises(PermissionDeniedError, match="refused the credentials"):
            asyncio.run(natsio.connect(NatsSettings(url=up["nats_url"], connect_timeout_s=2), "anonymous"))

        status = symbi("status", "--state-dir", str(state), env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        for name in catalog.SERVICE_NAMES:
            assert name in status.stdout

        response = httpx.get(f"{up['api_url']}/health", timeout=10)
        assert response.status_code == 200
        assert response.json()["missing"] == []
        check_api_key(proc, state, up)

        policies = symbi("policy", "--state-dir", str(state), "list", env=env)
        assert policies.returncode == 0, policies.stderr
        assert [line.split()[0] for line in policies.stdout.splitlines()[1:]] == [
            "platform-baseline",
            "regulated-data",
            "tools-default",
        ]

        # Without Docker no tier runs here: a task is refused plainly, never run unsandboxed.
        agent_id = create_readme_agent(state, env)
        ran = symbi("agent", "--state-dir", str(state), "run", agent_id, "--wait", env=env)
        assert ran.returncode == 1
        assert "no worker can ever run this task" in ran.stderr
        assert "none runs SANDBOX_TIER_TIER1_DOCKER (tiers available: none)" in ran.stderr

        check_bus_cli(state, env, agent_id, tmp_path)

        again = symbi("up", "--state-dir", str(state), env=env)
        assert again.returncode == 2
        assert "another `symbi up` is running" in again.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "symbi up: stopped" in rest
    for name in catalog.SERVICE_NAMES:  # each service finished its own graceful shutdown
        assert f"{name:<21} stopped (exit 0)" in rest, rest
    pids = [svc["pid"] for svc in up["services"].values()] + up["infra_pids"]
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not (state / "up.json").exists()


def check_api_key(proc: subprocess.Popen[str], state: Path, up: dict[str, Any]) -> None:
    """`symbi up` says where the bootstrap admin key is (0600), and it authenticates API calls."""
    hint = "\n".join(wait_for_line(proc, "try: curl", timeout_s=10))
    key_file = state / "api" / "admin.key"
    assert up["api_admin_key_file"] == str(key_file)
    assert f"API admin key in {key_file} (mode 0600)" in hint
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    anonymous = httpx.get(f"{up['api_url']}/v1/policies", timeout=10)
    assert anonymous.status_code == 401
    listed = httpx.get(f"{up['api_url']}/v1/policies", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert listed.status_code == 200, listed.text
    assert [p["id"] for p in listed.json()["policies"]] == ["platform-baseline", "regulated-data", "tools-default"]


def create_readme_agent(state: Path, env: dict[str, str]) -> str:
    """The README's agent example, against the example policies."""
    definition = str(POLICIES.parent / "agents" / "research_assistant.symbi")
    created = symbi("agent", "--state-dir", str(state), "--role", "operator", "--json", "create", definition, env=env)
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["agent_id"])


def check_bus_cli(state: Path, env: dict[str, str], researcher: str, tmp_path: Path) -> None:
    """Agents talk through the stack's authenticated broker, as the example policies allow."""
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({
        "metadata": {"name": "peer", "version": "1.0.0"}, "capabilities": ["send_messages"], "tenant": "research",
        "with": {"sandbox": "Tier1", "timeout": "10s", "memory": "64MB", "cpu": 0.1},
        "task": {"image": "symbi/base:bookworm", "command": ["true"]},
    }))  # fmt: skip
    created = symbi("agent", "--state-dir", str(state), "--role", "operator", "--json", "create", str(peer), env=env)
    assert created.returncode == 0, created.stderr
    peer_id = json.loads(created.stdout)["agent_id"]
    bus = ("bus", "--state-dir", str(state))
    sent = symbi(*bus, "send", "--from", researcher, peer_id, "findings attached", env=env)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("accepted ")
    heard = symbi(*bus, "--json", "listen", peer_id, "--count", "1", "--timeout", "20", env=env)
    assert heard.returncode == 0, heard.stderr
    assert json.loads(heard.stdout.splitlines()[-1]) | {"message_id": ""} == {
        "message_id": "", "sender": researcher, "topic": "", "content_type": "text/plain", "text": "findings attached"
    }  # fmt: skip
    outsider = symbi("agent", "--state-dir", str(state), "--role", "operator", "--json", "create",
                     str(POLICIES.parent / "agents" / "summarizer.yaml"), env=env)  # fmt: skip
    outsider_id = json.loads(outsider.stdout)["agent_id"]
    refused = symbi(*bus, "send", "--from", researcher, outsider_id, "across tenants", env=env)
    assert refused.returncode == 1
    assert "POLICY_DENIED" in refused.stderr
    stats = symbi(*bus, "--json", "stats", env=env)
    assert int(json.loads(stats.stdout)["rejected_by_reason"]["policy_denied"]) >= 1


def test_up_runs_the_readme_agent_in_a_real_sandbox(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = stack_env(tmp_path)
    del env["DOCKER_HOST"]  # the machine's Docker engine, with runc and runsc
    proc = subprocess.Popen(
        [sys.executable, "-m", "symbi_cli", "up", "--state-dir", str(state), "--policies", str(POLICIES)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        output = "\n".join(wait_for_line(proc, READY_LINE, timeout_s=120))
        assert "tiers available: Tier1, Tier2" in output
        agent_id = create_readme_agent(state, env)
        ran = symbi("agent", "--state-dir", str(state), "--json", "run", agent_id, "--wait", env=env, timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        status = json.loads(ran.stdout)
        assert status["state"] == "TASK_STATE_SUCCEEDED"
        assert status["report"]["runtime"] == "runc"  # research_assistant scores below 0.5: Tier 1
        assert status["task"]["risk"]["reason"].startswith("score ")
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest


def test_up_restarts_a_crashed_service(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = stack_env(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "symbi_cli", "up", "--state-dir", str(state), "--only", "mcp-gateway"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        wait_for_line(proc, READY_LINE, timeout_s=60)
        up = json.loads((state / "up.json").read_text())
        os.kill(up["services"]["mcp-gateway"]["pid"], signal.SIGKILL)
        wait_for_line(proc, "mcp-gateway exited (-9); restarting", timeout_s=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = asyncio.run(all_healthy(up["nats_url"], up["nats_credentials"]))
            if health.get("mcp-gateway"):
                break
        assert health.get("mcp-gateway") is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
