"""The scenarios end to end on the full local stack (`symbi up`), with real Docker, runc and gVisor.

What a user would run: `symbi up --config examples/scenarios/symbi.toml --policies
examples/policies`, then `symbi scenario run examples/scenarios/<name>.py`. The tests read
the scenario's JSON report and check it against the system itself: the agents' state
histories, the sandboxes (and that none is left), the audit chain from each decision to
its outcome, and an offline proof of the scenario's events from an exported copy of the
log. The fault test kills every service in turn while a scenario runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from symbi_testing.up import UpStack, stack_env, wait_for_line

from symbi_common import catalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "examples" / "scenarios"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    base = tmp_path_factory.mktemp("scenarios")
    up = UpStack(
        base / "state",
        stack_env(base, docker=True),
        "--policies", str(ROOT / "examples" / "policies"),
        config=SCENARIOS / "symbi.toml",
    )  # fmt: skip
    try:
        output = "\n".join(up.wait_ready(180))
        assert "tiers available: Tier1, Tier2" in output, output
        yield up
    finally:
        rest = up.stop()
        assert up.proc.returncode == 0, rest


def run_scenario(stack: UpStack, name: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report, ids = out / f"{name}.json", out / f"{name}.ids"
    result = stack.symbi(
        "scenario", "run", str(SCENARIOS / f"{name}.py"), "--report", str(report), "--ids", str(ids), timeout=300
    )
    doc = json.loads(report.read_text()) if report.exists() else {}
    return result, doc


def step(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["name"].startswith(prefix))


def events_of(item: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
    return [e for e in item["events"] if e["event_type"] == event_type]


def task_containers(agent_ids: list[str]) -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": "symbi.task"})
        return [c.name for c in found if c.labels.get("symbi.agent") in agent_ids]
    finally:
        client.close()


def test_research_scenario_proves_every_step(stack: UpStack, tmp_path: Path) -> None:
    result, doc = run_scenario(stack, "research", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "scenario passed" in result.stdout
    assert doc["ok"]
    assert all(check["ok"] for check in doc["checks"])

    # RAG: the answer cites the bleaching study, and each read of knowledge was a policy decision.
    ask = step(doc, "researcher asks: ")
    assert "reef-bleaching.md" in ask["facts"]["citations"]
    reads = events_of(ask, "policy.decision")
    assert reads
    assert all(e["details"]["enforcement_point"] == "data_access" for e in reads)

    # The request to the summariser and its reply: two routed messages, each with its decision.
    request = step(doc, "researcher asks summarizer")
    routed = events_of(request, "message.routed")
    decisions = {e["details"]["decision_id"] for e in events_of(request, "policy.decision")}
    assert len(routed) == 2
    assert {e["details"]["kind"] for e in routed} == {"request", "reply"}
    assert {e["details"]["decision_id"] for e in routed} <= decisions

    # The message across tenants: refused, nothing delivered, the refusal audited with its decision.
    refused = step(doc, "researcher sends auditor")
    (rejection,) = events_of(refused, "message.rejected")
    assert rejection["details"]["reason"] == "MESSAGE_REJECT_REASON_POLICY_DENIED"
    assert rejection["details"]["decision_id"] in {
        e["details"]["decision_id"] for e in events_of(refused, "policy.decision")
    }

    # The tool: verified, decided, called, its outcome audited with the result's hash.
    tool = step(doc, "researcher calls lab-tools/word_count")
    assert tool["facts"]["verification"] == "VERIFICATION_STATUS_VERIFIED"
    (outcome,) = events_of(tool, "tool.outcome")
    assert outcome["outcome"] == "success"
    assert len(outcome["details"]["result_sha256"]) == 64
    assert any("tool_invoke allow" in chain and "tool.outcome" in chain for chain in tool["chains"])

    # The task: admitted at Tier 1 by its risk, run under runc, isolated, its end audited.
    admitted = step(doc, "researcher is given a task")
    assert admitted["facts"]["tier"] == "TIER1_DOCKER"
    assert admitted["facts"]["risk"] < 0.5
    finished = step(doc, "task ")
    assert finished["facts"]["runtime"] == "runc"
    assert "uid=65534" in finished["facts"]["output"]
    (end,) = events_of(finished, "task.finished")
    assert end["details"]["state"] == "succeeded"
    assert end["details"]["decision_id"] == events_of(finished, "task.admitted")[0]["details"]["decision_id"]

    # Every event of every step is proven here, and again offline from an exported copy of the log.
    assert all(e["proven"] for s in doc["steps"] for e in s["events"])
    prove_offline(stack, tmp_path, tmp_path / "research.ids")
    assert task_containers(list(doc["agents"].values())) == []


def prove_offline(stack: UpStack, tmp_path: Path, ids: Path) -> None:
    exported, keys = tmp_path / "evidence", tmp_path / "keys.json"
    assert stack.symbi("audit", "keys", "--save", str(keys)).returncode == 0
    exported_run = stack.symbi("audit", "export", str(exported), "--storage", str(stack.state / "audit"))
    assert exported_run.returncode == 0, exported_run.stderr
    verified = stack.symbi("audit", "verify", str(exported), "--public-key", str(keys), "--prove-file", str(ids))
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    wanted = {line for line in ids.read_text().splitlines() if line}
    assert wanted
    assert verified.stdout.count("proven ") == len(wanted)


def test_security_scenario_suspends_the_scanner_and_leaves_no_sandbox(stack: UpStack, tmp_path: Path) -> None:
    result, doc = run_scenario(stack, "security", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    scan = step(doc, "net_scanner calls lab-tools/port_scan")
    (decision,) = events_of(scan, "tool.decision")
    assert decision["outcome"] == "denied"
    assert events_of(scan, "tool.outcome") == []  # the server was never reached
    running, stopped = [s for s in doc["steps"] if s["name"].startswith("task ")]
    assert running["facts"]["runtime"] == "runsc"
    assert "kernel=4.4.0" in stopped["facts"]["output"]  # what it printed while it ran
    suspended = step(doc, "net_scanner is suspended")
    (transition,) = events_of(suspended, "agent.state_changed")
    assert transition["details"]["to"] == "suspended"
    assert transition["details"]["cause"] == "policy_violation"
    assert task_containers(list(doc["agents"].values())) == []


# The line of the research scenario after which each service is killed: just before (or while) it is needed.
KILL_AFTER = {
    "api": "scenario: research",
    "policy": "create agent from researcher",
    "lifecycle": "create agent from summarizer",
    "context": "create agent from auditor",
    "audit": "ingests 4 documents",
    "mcp-gateway": "publishes on research.findings",
    "scheduler": "calls lab-tools/word_count",
    "sandbox-orchestrator": "is given a task",
}


def test_every_service_killed_in_turn_during_a_scenario(stack: UpStack, tmp_path: Path) -> None:
    """One scenario run per service, SIGKILLed at a given point of it; `symbi up` restarts it each time."""
    assert set(KILL_AFTER) == set(catalog.SERVICE_NAMES)
    agents, steps, outcomes = [], [], {}
    for name in catalog.SERVICE_NAMES:
        report = tmp_path / f"{name}.json"
        runner = subprocess.Popen(
            [sys.executable, "-m", "symbi_cli", *stack.config_args, "scenario", "--state-dir", str(stack.state),
             "run", str(SCENARIOS / "research.py"), "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=stack.env,
        )  # fmt: skip
        try:
            before = "\n".join(wait_for_line(runner, KILL_AFTER[name], timeout_s=120))
            os.kill(stack.info["services"][name]["pid"], signal.SIGKILL)
            rest, _ = runner.communicate(timeout=300)
        finally:
            if runner.poll() is None:
                runner.kill()
        output = before + "\n" + rest
        # It completed, or it failed saying which steps and why; never a traceback.
        assert "Traceback" not in output, (name, output[-4000:])
        assert ("scenario passed" in output) or ("scenario FAILED" in output), (name, output[-4000:])
        doc = json.loads(report.read_text())
        assert all(item["ok"] or item["detail"] for item in doc["steps"])  # a failed step says why
        outcomes[name] = "passed" if doc["ok"] else f"failed: {'; '.join(doc['failures'])}"
        agents += list(doc["agents"].values())
        steps += doc["steps"]
        stack.wait_healthy(120)
    print("scenario runs, one service killed in each:", json.dumps(outcomes, indent=2))
    # Nothing was lost: the whole log verifies, with every event the runs proved, and every agent's
    # persisted history matches its audit trail; no task container outlived its agent.
    prove_offline(stack, tmp_path, _ids_of({"steps": steps}, tmp_path))
    for agent_id in agents:
        shown = stack.symbi("agent", "show", agent_id, "--history").stdout
        transitions = [line for line in shown.splitlines() if " -> " in line]
        audited = json.loads(
            stack.symbi("audit", "--json", "query", "--agent", agent_id, "--type", "agent.*", "--limit", "100").stdout
        )["events"]
        assert len(audited) == len(transitions), (agent_id, transitions, [e["event_type"] for e in audited])
    assert task_containers(agents) == []


def _ids_of(doc: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "faulty.ids"
    proven = dict.fromkeys(e["event_id"] for s in doc["steps"] for e in s["events"] if e["proven"])
    path.write_text("".join(f"{event_id}\n" for event_id in proven))
    return path
