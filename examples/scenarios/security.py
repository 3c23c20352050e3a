"""A network scanner runs in gVisor; its intrusive scan is refused by policy, so its supervisor
suspends it (its sandbox is stopped and removed), and while suspended it cannot even send a report.

Run it on the stack of `symbi up --config examples/scenarios/symbi.toml --policies examples/policies`:

    symbi scenario run examples/scenarios/security.py
"""

from __future__ import annotations

from symbi_cli.scenarios.runtime import Scenario
from symbi_proto.v1 import message_pb2, task_pb2

TITLE = "security: an intrusive action refused, its agent suspended and stopped"


async def run(scenario: Scenario) -> None:
    await scenario.policies("policies/lab.yaml")
    scanner = await scenario.agent("agents/scanner.symbi")
    responder = await scenario.agent("agents/responder.symbi")

    task_id = await scenario.start_task(scanner)
    running = await scenario.wait_task(task_id, task_pb2.TASK_STATE_RUNNING, timeout_s=120)
    scenario.expect(running.task.tier == 2, "untrusted code with confidential data runs in Tier 2")  # gVisor

    async def started() -> bool:
        return "scanner up" in "".join(scenario.outputs.get(task_id, []))

    await scenario._until(started, 60, "the scanner's first output")
    scenario.expect("kernel=4.4.0" in "".join(scenario.outputs[task_id]), "its kernel is gVisor's, not the host's")

    scan = await scenario.tool(scanner, "lab-tools", "port_scan", {"target": "10.0.0.0/8"})
    denied = scan.HasField("error") and scan.error.code == "permission_denied"
    scenario.expect(denied, "the intrusive scan is refused by policy")
    scenario.expect("intrusive network scans" in scan.error.message, "with the policy's reason")

    if denied:  # the supervisor's rule: a refused intrusive action suspends the agent
        await scenario.suspend(scanner, f"policy violation: {scan.error.message}")
    stopped = await scenario.wait_task(task_id, task_pb2.TASK_STATE_CANCELLED, task_pb2.TASK_STATE_QUEUED, timeout_s=60)
    scenario.expect(stopped.state != task_pb2.TASK_STATE_RUNNING, "its sandbox was stopped")

    report = await scenario.send(scanner, responder, "scan results attached")
    scenario.expect(
        report.reason == message_pb2.MESSAGE_REJECT_REASON_POLICY_DENIED, "a suspended agent cannot send messages"
    )
    await scenario.terminate(scanner, "suspended for an intrusive scan")
    history = await scenario.history(scanner)
    scenario.expect(history[-3:] == ["RUNNING", "SUSPENDED", "TERMINATED"], f"scanner went {history}")
