"""`symbi agent`: validate offline, then create, list, show, run, suspend, resume, terminate against the agent core."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import AgentStack, agent_source

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def symbi(*args: str) -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop the services run in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symbi_cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_validate_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.symbi"
    bad.write_text('agent a() {\n  capabilities = ["teleport"]\n  with sandbox = "Tier3" {}\n}\n')
    code, out, _ = await symbi(
        "agent", "validate", str(bad), *map(str, sorted((ROOT / "examples" / "agents").iterdir()))
    )
    assert code == 1
    assert f"{bad}:2:19: error: unknown capability 'teleport'" in out
    assert f"{bad}:3:8: error: sandbox is one of Tier1, Tier2, not 'Tier3' [bad_value]" in out
    assert out.count(": ok: agent ") == 6
    code, out, _ = await symbi("agent", "validate", str(ROOT / "examples" / "agents" / "summarizer.yaml"))
    assert (code, out.strip()) == (
        0,
        f"{ROOT}/examples/agents/summarizer.yaml: ok: agent summarizer (4 capabilities, 3 policy statements)",
    )


async def test_the_whole_agent_life_from_the_command_line(agent_stack: AgentStack, tmp_path: Path) -> None:
    stack = agent_stack
    await stack.worker("cli-node")
    url = stack.settings.nats.url
    base = ("--nats-url", url, "--as", "tester")
    definition = tmp_path / "cli_agent.symbi"
    definition.write_text(agent_source("cli_agent", seconds=60).text)

    code, out, err = await symbi("agent", *base, "--json", "create", str(definition))
    assert code == 0, err
    agent_id = json.loads(out)["agent_id"]
    code, out, _ = await symbi("agent", *base, "list", "--state", "ready")
    assert code == 0
    assert f"{agent_id}  ready" in out
    code, out, _ = await symbi("agent", *base, "show", agent_id, "--dsl")
    assert "agent cli_agent()" in out
    code, out, err = await symbi("agent", *base, "run", agent_id, "--priority", "high")
    assert code == 0, err
    assert "queued" in out
    await stack.agent_state(agent_id, 3)  # running
    code, out, err = await symbi("agent", *base, "suspend", agent_id, "--reason", "cli test")
    assert (code, "suspended" in out) == (0, True), err
    code, out, err = await symbi("agent", *base, "resume", agent_id)
    assert (code, "running" in out) == (0, True), err
    code, out, err = await symbi("agent", *base, "terminate", agent_id, "--grace", "1")
    assert code == 0, err
    assert "terminated" in out
    code, out, _ = await symbi("agent", *base, "show", agent_id, "--history")
    assert "suspended -> terminated" in out
    assert "ready -> running" in out

    stranger = ("--nats-url", url, "--as", "stranger")
    code, _, err = await symbi("agent", *stranger, "create", str(definition))
    assert code == 1
    assert "permission_denied" in err


async def test_run_wait_reports_the_outcome(agent_stack: AgentStack) -> None:
    stack = agent_stack
    await stack.worker("cli-node")
    ok = await stack.agent("finishes", seconds=0.1)
    failing = await stack.agent("fails", seconds=0.1, labels={"symbi.simulate/exit_code": "3"})
    base = ("--nats-url", stack.settings.nats.url, "--as", "tester")
    code, out, err = await symbi("agent", *base, "run", ok.agent_id, "--wait")
    assert code == 0, err
    assert "succeeded on cli-node" in out
    code, out, _ = await symbi("agent", *base, "run", failing.agent_id, "--wait")
    assert code == 1
    assert "failed on cli-node: exited with 3" in out
