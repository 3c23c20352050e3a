"""Bad configuration and busy ports give one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from symbi_common import catalog

pytestmark = pytest.mark.integration


def symbi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    return subprocess.run(
        [sys.executable, "-m", "symbi_cli", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
    )


def test_help_explains_every_command() -> None:
    result = symbi("--help")
    assert result.returncode == 0
    for command in ("up", "serve", "status", "config", "policy", "audit"):
        assert command in result.stdout
    serve = symbi("serve", "--help")
    assert all(name in serve.stdout for name in catalog.SERVICE_NAMES)
    assert "SIGTERM" in serve.stdout


def test_malformed_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "symbi.toml"
    config.write_text("[runtime]\nscheduler_threads = -2\n")
    result = symbi("--config", str(config), "config", "check")
    assert result.returncode == 2
    assert "[runtime].scheduler_threads" in result.stderr
    assert "greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_variable_names_the_variable() -> None:
    result = symbi("config", "check", env={"SYMBI_NATS_REQUEST_TIMEOUT_S": "soon"})
    assert result.returncode == 2
    assert "SYMBI_NATS_REQUEST_TIMEOUT_S='soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_api_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = symbi("up", "--state-dir", str(tmp_path), env={"SYMBI_API_PORT": str(port), "SYMBI_POLICY_PORT": "0"})
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 for api is in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nats").exists()


def test_serve_with_busy_metrics_port_exits_cleanly(tmp_path: Path, nats_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = symbi(
            "serve", "mcp-gateway",
            env={"SYMBI_METRICS_PORT": str(port), "SYMBI_NATS_URL": nats_url, "SYMBI_STATE_DIR": str(tmp_path)},
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_only_service_is_refused(tmp_path: Path) -> None:
    result = symbi("up", "--state-dir", str(tmp_path), "--only", "policy,warp-drive")
    assert result.returncode == 2
    assert "unknown service(s) warp-drive" in result.stderr


def test_config_show_masks_secrets() -> None:
    result = symbi("config", "show", env={"OPENAI_API_KEY": "sk-very-secret"})
    assert result.returncode == 0
    assert "sk-very-secret" not in result.stdout
    assert '"openai_api_key": "**********"' in result.stdout


def test_status_without_a_stack_fails_clearly(tmp_path: Path) -> None:
    result = symbi("status", "--nats-url", "nats://127.0.0.1:1", env={"SYMBI_NATS_CONNECT_TIMEOUT_S": "1"})
    assert result.returncode == 1
    assert "connect to NATS" in result.stderr
    assert "Traceback" not in result.stderr
