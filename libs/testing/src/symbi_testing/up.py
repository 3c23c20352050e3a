"""Driving the ``symbi`` command and a whole ``symbi up`` stack from tests, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from symbi_common import catalog, fleet, natsio
from symbi_common.health import is_ready
from symbi_common.settings import NatsSettings

READY_LINE = "services ready"


def symbi(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``symbi ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "symbi_cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def stack_env(tmp_path: Path, *, docker: bool = False) -> dict[str, str]:
    """The environment without any SYMBI_ variable of the caller, free ports, and Docker only if asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    env.update({"SYMBI_API_PORT": "0", "SYMBI_POLICY_PORT": "0"})
    if not docker:
        env["DOCKER_HOST"] = f"unix://{tmp_path}/absent.sock"
    return env


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"never saw {needle!r}; output so far:\n" + "\n".join(lines))


async def all_healthy(nats_url: str, credentials: str) -> dict[str, bool]:
    creds = Path(credentials) if credentials else None
    nc = await natsio.connect(NatsSettings(url=nats_url, connect_timeout_s=5, credentials=creds), "test-up")
    try:
        replies = await fleet.collect(nc, window_s=1.0, expect=catalog.SERVICE_NAMES)
    finally:
        await nc.close()
    return {s.service: is_ready(s) for s in replies}


class UpStack:
    """``symbi up`` in the background: started, waited for, read from its state file, stopped."""

    def __init__(self, state: Path, env: dict[str, str], *up_args: str, config: Path | None = None) -> None:
        self.state = state
        self.env = env
        config_args = ["--config", str(config)] if config is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "symbi_cli", *config_args, "up", "--state-dir", str(state), *up_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.output: list[str] = []
        self.config_args = config_args

    def wait_ready(self, timeout_s: float = 120) -> list[str]:
        self.output += wait_for_line(self.proc, READY_LINE, timeout_s)
        return self.output

    @property
    def info(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.state / "up.json").read_text())
        return doc

    def symbi(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``symbi GROUP --state-dir STATE ARGS``: a command group aimed at this stack."""
        group, *rest = args
        return symbi(*self.config_args, group, "--state-dir", str(self.state), *rest, env=self.env, timeout=timeout)

    def healthy(self) -> dict[str, bool]:
        return asyncio.run(all_healthy(self.info["nats_url"], self.info["nats_credentials"]))

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        health: dict[str, bool] = {}
        while time.monotonic() < deadline:
            health = self.healthy()
            if health == dict.fromkeys(catalog.SERVICE_NAMES, True):
                return
        raise AssertionError(f"not every service healthy within {timeout_s}s: {health}")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 90) -> str:
        self.proc.send_signal(sig)
        rest, _ = self.proc.communicate(timeout=timeout_s)
        return rest
