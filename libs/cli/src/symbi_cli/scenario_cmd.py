"""``symbi scenario run FILE``: run a scenario against the running stack and prove what happened.

A scenario (see ``examples/scenarios/``) is a Python file with ``TITLE`` and
``async def run(scenario)``; ``symbi_cli.scenarios.runtime.Scenario`` is what it gets.
The command prints each step as it happens, then, per step, the chain from each policy
decision to the events that carried it out and whether every one of those audit events
is proven to be in the signed log. ``--report`` writes all of it as JSON; ``--ids``
writes the event ids for ``symbi audit verify --prove-file`` on an exported log. Exit
code 1 when a step or a check failed or an event could not be proven.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from symbi_cli import subcommands
from symbi_cli.stack import nats_settings_for, running_value
from symbi_common import natsio, telemetry
from symbi_common.errors import InvalidArgumentError, SymbiError

if TYPE_CHECKING:
    from symbi_cli.scenarios.runtime import Scenario


def register(commands: Any) -> None:
    _, add = subcommands.group(
        commands,
        "scenario",
        "run a multi-agent scenario on the running stack and prove it from the audit trail",
        "Run a scenario file (examples/scenarios/*.py) against the stack `symbi up` runs: agents are created, "
        "talk, use memory and tools and run tasks in sandboxes, every action through policy; afterwards each "
        "step's audit events are linked and proven to be in the signed log.",
    )
    run = add("run", "run one scenario file", _run)
    run.add_argument("file", type=Path, help="a scenario, e.g. examples/scenarios/research.py")
    run.add_argument("--nats-url", help="NATS of the stack (default: the running `symbi up`)")
    run.add_argument("--report", type=Path, help="write the steps, checks, events and proofs here (JSON)")
    run.add_argument("--ids", type=Path, help="write the proven event ids here, one per line")
    run.add_argument("--keep-agents", action="store_true", help="leave the scenario's agents running at the end")


def load_scenario(path: Path) -> ModuleType:
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such scenario file")
    spec = importlib.util.spec_from_file_location(f"symbi_scenario_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise InvalidArgumentError(f"{path}: a scenario defines `async def run(scenario)`")
    return module


async def _retire(scenario: Scenario) -> None:
    """Terminate the scenario's agents that are still alive (their names are free for the next run)."""
    from symbi_proto.v1 import agent_pb2

    for agent in list(scenario.agents.values()):
        record = await scenario.again("get agent", lambda a=agent: scenario.lifecycle.get(a.agent_id))  # type: ignore[misc]
        if record.state != agent_pb2.AGENT_STATE_TERMINATED:
            await scenario.terminate(agent, "the scenario is over")


def _run(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    module = load_scenario(args.file)
    settings = load(args)
    state_dir = args.state_dir or settings.runtime.state_dir
    nats_settings = nats_settings_for(settings, args.state_dir, args.nats_url or "", connect_timeout_s=10.0)
    policy_addr = running_value(state_dir, "policy_addr") or settings.policy.addr
    settings = settings.model_copy(
        update={"nats": nats_settings, "policy": settings.policy.model_copy(update={"addr": policy_addr})}
    )
    telemetry.configure_tracing("scenario", "cli")
    return asyncio.run(_main(args, module, settings))


async def _main(args: argparse.Namespace, module: ModuleType, settings: Any) -> int:
    from symbi_cli.scenarios.evidence import Evidence, StepEvidence

    def say(line: str) -> None:
        print(line, flush=True)

    from symbi_cli.scenarios.runtime import Scenario

    nc = await natsio.connect(settings.nats, "symbi-scenario")
    scenario = Scenario(nc, settings, args.file.resolve().parent, say)
    evidence = Evidence(nc, say)
    proven: list[StepEvidence] = []
    problems: list[str] = []
    try:
        await evidence.start()
        say(f"scenario: {getattr(module, 'TITLE', args.file.stem)} (run {scenario.run_id})")
        try:
            await module.run(scenario)
        except SymbiError as exc:
            scenario.expect(False, f"the scenario stopped: {exc}")
        finally:
            if not args.keep_agents:
                await _retire(scenario)
            await scenario.close()
        say("audit proof (each step: its policy decisions -> the events that carried them out):")
        try:
            proven = await evidence.prove(scenario.steps)
        except SymbiError as exc:
            problems.append(f"the audit proof could not be made: {exc}")
    finally:
        await nc.close()
    unproven = 0
    for item in proven:
        ok = sum(item.proven.values())
        unproven += len(item.events) - ok
        say(f"  {item.step.name}: {ok}/{len(item.events)} events proven in the log "
            f"(checkpoint of {evidence.checkpoint.tree_size}, key {evidence.checkpoint.key_id[:12]})")  # fmt: skip
        for line in item.chains:
            say(f"      {line}")
    problems += [f"{unproven} audit events not proven"] if unproven else []
    failures = scenario.failed + problems
    if args.report:
        doc = {
            "scenario": getattr(module, "TITLE", args.file.stem),
            "run_id": scenario.run_id,
            "ok": not failures,
            "failures": failures,
            "checks": [{"ok": ok, "what": what} for ok, what in scenario.checks],
            "agents": {name: agent.agent_id for name, agent in scenario.agents.items()},
            "checkpoint": {
                "tree_size": evidence.checkpoint.tree_size,
                "key_id": evidence.checkpoint.key_id,
                "root_hash": evidence.checkpoint.root_hash.hex(),
            },
            "steps": [item.as_dict() for item in proven],
        }
        args.report.write_text(json.dumps(doc, indent=2))
    if args.ids:
        unique = dict.fromkeys(e.event_id for item in proven for e in item.events)  # steps may share events
        args.ids.write_text("".join(f"{event_id}\n" for event_id in unique))
    if failures:
        print("scenario FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    say(f"scenario passed: {len(scenario.steps)} steps, {len(scenario.checks)} checks, every audit event proven")
    return 0
