"""`symbi policy`: validate offline, then apply, query, explain and dry-run against a running service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from symbi_testing.fixtures import RunService

from symbi_policy.service import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_policy_log")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))
SEARCH = {
    "action": "tool_invoke",
    "operation": "call",
    "subject": {"kind": "agent", "id": "a1", "capabilities": ["web_search"]},
    "resource": {"type": "tool", "id": "search/web"},
}
SHELL = {**SEARCH, "resource": {"type": "tool", "id": "shell/bash"}}


async def symbi(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop the policy service runs in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symbi_cli", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_validate_is_offline_and_points_at_problems(tmp_path: Path) -> None:
    code, out, _ = await symbi("policy", "validate", *map(str, EXAMPLES))
    assert code == 0
    assert "ok " in out
    assert "tools-default (5 rules)" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "id: b\nrules:\n  - name: r\n    effect: allow\n    actions: [tool_invoke]\n    when: subject.x >\n"
    )
    code, _, err = await symbi("policy", "validate", str(broken))
    assert code == 1
    assert f"{broken}:6:21: rule r: condition ends too early" in err


async def test_apply_query_explain_and_dry_run(run_service: RunService, nc: Client, tmp_path: Path) -> None:
    runner = await run_service(SPEC)
    assert runner.ctx is not None
    addr = ["policy", "--addr", runner.ctx.health.endpoints["grpc"]]

    code, out, err = await symbi(*addr, "apply", *map(str, EXAMPLES))
    assert code == 0, err
    assert "applied tools-default v1 from tools.yaml (policy set v3)" in out
    code, out, _ = await symbi(*addr, "apply", str(EXAMPLES[-1]))
    assert "unchanged tools-default v1" in out

    code, out, _ = await symbi(*addr, "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "platform-baseline",
        "regulated-data",
        "tools-default",
    ]
    code, out, _ = await symbi(*addr, "--json", "list")
    assert {row["id"] for row in json.loads(out)} == {"platform-baseline", "regulated-data", "tools-default"}

    code, out, _ = await symbi(*addr, "eval", json.dumps(SEARCH))
    assert code == 0
    assert out.startswith("ALLOW_WITH_CONDITIONS  rule tools-default/search-tools v1")
    assert "condition rate_limit" in out
    assert '"key": "agent:a1:tool:search/web"' in out
    request_file = tmp_path / "shell.yaml"
    request_file.write_text(json.dumps(SHELL))
    code, out, _ = await symbi(*addr, "eval", str(request_file))
    assert code == 1
    assert "reason: shell tools need the trusted_code capability [DENY_KIND_RULE]" in out
    code, out, _ = await symbi(*addr, "eval", "-", stdin=json.dumps({**SEARCH, "action": "teleport"}))
    assert code == 1
    assert "unknown enforcement point 'teleport'" in out + _

    code, out, _ = await symbi(*addr, "explain", json.dumps(SHELL))
    assert code == 0
    assert "MATCH tools-default/no-shell-for-untrusted v1 [deny]" in out

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        (ROOT / "examples" / "policies" / "tools.yaml").read_text().replace("tool:search/*", "tool:x/*")
    )
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("\n".join(json.dumps(r) for r in (SEARCH, SHELL)) + "\n")
    code, out, _ = await symbi(*addr, "dry-run", str(recorded), "--candidate", str(candidate))
    assert code == 0
    assert out.splitlines()[0] == "1 of 2 decisions would change:"
    assert "#0: allow_with_conditions -> deny" in out

    code, out, _ = await symbi(*addr, "show", "tools-default")
    assert code == 0
    assert out.startswith("# tools-default v1, created by cli")
    code, out, _ = await symbi(*addr, "delete", "tools-default", "--reason", "test")
    assert "deleted tools-default (policy set v4)" in out
    code, _, err = await symbi(*addr, "show", "tools-default")
    assert code == 1
    assert "not_found: no policy 'tools-default'" in err


async def test_an_unreachable_service_is_a_clear_error_not_a_traceback() -> None:
    code, out, err = await symbi("policy", "--addr", "127.0.0.1:1", "eval", json.dumps(SEARCH))
    assert code == 1
    assert "DENY" in out
    assert "unavailable" in out
    code, _, err = await symbi("policy", "--addr", "127.0.0.1:1", "list")
    assert code == 1
    assert "unavailable" in err
    assert "Traceback" not in err
