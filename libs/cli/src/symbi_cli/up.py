"""``symbi up``: the whole stack on this machine, embedded defaults, Ctrl-C to stop.

Order: pre-flight (ports, state-dir lock) → NATS → Redis → Docker probe → every
service as its own process → wait until each reports ready over NATS → supervise
(a crashed service is restarted up to three times) → on Ctrl-C/SIGTERM stop all.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from symbi_cli.stack import MAX_RESTARTS, Stack, StackPlan
from symbi_common import catalog, embedded
from symbi_common.errors import ConfigError
from symbi_common.health import is_ready
from symbi_common.settings import Settings

SUPERVISE_INTERVAL_S = 0.5


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "up",
        help="run the whole stack on this machine",
        description="Start NATS (JetStream) and Redis/Valkey locally, then every Symbi service as its own "
        "process; print where each listens and when it is ready; stop everything on Ctrl-C. "
        "State (JetStream, Redis, logs) lives under the state directory.",
    )
    parser.add_argument("--state-dir", type=Path, help="state directory (default: [runtime].state_dir)")
    parser.add_argument("--only", metavar="SVC,...", help="start only these services (comma-separated)")
    parser.add_argument("--nats-url", help="use this NATS server instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis server instead of starting one")
    parser.add_argument(
        "--policies",
        type=Path,
        metavar="DIR",
        help="policy files for the policy service to load and watch (default: [policy].directory; "
        "none means every request is denied until policies are applied)",
    )
    parser.add_argument(
        "--no-broker-auth",
        dest="broker_auth",
        action="store_false",
        help="run the embedded NATS without authorization (by default it runs in operator mode: every "
        "service and every agent connects as its own user, agents confined to their own subjects)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
    parser.set_defaults(handler=handle)


def plan_stack(args: argparse.Namespace, settings: Settings) -> StackPlan:
    available = catalog.available()
    services = available
    if args.only:
        services = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in services if name not in available]
        if unknown:
            raise ConfigError(f"--only: unknown service(s) {', '.join(unknown)}; known: {', '.join(available)}")
    api_port = _port("api", settings.api.host, settings.api.port, "[api].port or SYMBI_API_PORT", ())
    policy_port = _port(
        "policy gRPC", settings.policy.host, settings.policy.port, "[policy].port or SYMBI_POLICY_PORT", (api_port,)
    )
    return StackPlan(
        state_dir=(args.state_dir or settings.runtime.state_dir).resolve(),
        services=services,
        api_port=api_port,
        policy_port=policy_port,
        nats_url=args.nats_url or "",
        redis_url=args.redis_url or "",
        config_path=args.config,
        policy_dir=_policy_dir(args.policies),
        broker_auth=bool(getattr(args, "broker_auth", True)),
    )


def _policy_dir(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_dir():
        raise ConfigError(f"--policies {path}: not a directory")
    return path.resolve()


def _port(what: str, host: str, port: int, how: str, taken: tuple[int, ...]) -> int:
    if port == 0:
        return embedded.free_port(host, avoid=taken)
    if embedded.port_in_use(host, port):
        raise ConfigError(f"port {port} on {host} for {what} is in use; choose another with {how} (0 picks a free one)")
    return port


def handle(args: argparse.Namespace) -> int:
    from symbi_cli.main import load

    settings = load(args)
    plan = plan_stack(args, settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(settings, plan, say=lambda line: print(line, flush=True))
    stack.acquire_state_dir()
    print(f"symbi up: state in {plan.state_dir}", flush=True)
    try:
        return _run(stack, args.timeout, stop)
    finally:
        print("symbi up: stopping ...", flush=True)
        stack.stop()
        print("symbi up: stopped", flush=True)


def _run(stack: Stack, timeout_s: float, stop: threading.Event) -> int:
    stack.start_infra()
    _report_docker(stack)
    stack.start_services()
    started = time.monotonic()
    latest = asyncio.run(stack.wait_ready(timeout_s, cancelled=stop.is_set))
    if stop.is_set():
        return 0
    not_ready = [name for name in stack.plan.services if name not in latest or not is_ready(latest[name])]
    if not_ready:
        print(f"symbi up: not ready after {time.monotonic() - started:.1f}s: {', '.join(not_ready)}", file=sys.stderr)
        for name in not_ready:
            child = stack.children[name]
            state = "running" if child.process.alive() else f"exited with {child.process.returncode()}"
            print(f"--- {name} ({state}); last lines of {child.process.log_path}:", file=sys.stderr)
            print(child.process.tail(15), file=sys.stderr)
        return 1
    state_file = stack.write_state()
    print(
        f"symbi up: all {len(stack.plan.services)} services ready in {time.monotonic() - started:.1f}s. "
        f"API http://{stack.settings.api.host}:{stack.plan.api_port}  NATS {stack.nats_url}\n"
        f"symbi up: state file {state_file}; `symbi status` shows health. Press Ctrl-C to stop.",
        flush=True,
    )
    _api_hint(stack)
    return _supervise(stack, stop)


def _api_hint(stack: Stack) -> None:
    """How to call the API: where the bootstrap admin key is, and one request to try."""
    if "api" not in stack.plan.services:
        return
    url = f"http://{stack.settings.api.host}:{stack.plan.api_port}"
    key_file = stack.api_admin_key_file()
    if key_file is None:
        print(f"symbi up: API keys: the configured [api].admin_key, or `symbi api-key create`; docs at {url}/docs")
        return
    print(
        f"symbi up: API admin key in {key_file} (mode 0600); more keys: `symbi api-key create NAME --scope ...`\n"
        f'symbi up: try: curl -H "Authorization: Bearer $(cat {key_file})" {url}/v1/system/status',
        flush=True,
    )


def _report_docker(stack: Stack) -> None:
    if "sandbox-orchestrator" not in stack.plan.services:
        return
    from symbi_sandbox_orchestrator.runtimes import probe_docker

    probe = probe_docker()
    print(f"  docker    {probe.describe()}", flush=True)


def _supervise(stack: Stack, stop: threading.Event) -> int:
    while not stop.wait(SUPERVISE_INTERVAL_S):
        for child in stack.dead_children():
            code = child.process.returncode()
            if child.restarts >= MAX_RESTARTS:
                print(
                    f"symbi up: {child.name} exited ({code}) after {MAX_RESTARTS} restarts; giving up", file=sys.stderr
                )
                print(child.process.tail(15), file=sys.stderr)
                return 1
            print(f"symbi up: {child.name} exited ({code}); restarting", file=sys.stderr, flush=True)
            stack.spawn(child.name)
            stack.write_state()
    return 0
