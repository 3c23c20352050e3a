"""The local stack behind ``symbi up``: embedded NATS and Redis, one process per service.

``Stack`` owns every child process. It writes ``<state_dir>/up.json`` (URLs, ports,
pids) so ``symbi status`` and tests can find the running stack, holds a lock so two
stacks never share a state directory, and stops children in reverse start order.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from symbi_common import embedded, envvars, fleet, natsauth, natsio
from symbi_common.errors import ConfigError
from symbi_common.health import is_ready, status_name
from symbi_common.settings import NatsSettings, Settings
from symbi_proto.v1 import health_pb2

STATE_FILE = "up.json"
MAX_RESTARTS = 3


@dataclass
class ServiceProcess:
    name: str
    process: embedded.ManagedProcess
    metrics_port: int
    restarts: int = 0


@dataclass
class StackPlan:
    """What to start, decided before anything starts (so a bad port fails fast)."""

    state_dir: Path
    services: list[str]
    api_port: int
    policy_port: int
    nats_url: str = ""
    redis_url: str = ""
    config_path: Path | None = None
    policy_dir: Path | None = None
    broker_auth: bool = True
    """Embedded NATS in operator mode: services and agents each connect as their own user."""


@dataclass
class Stack:
    settings: Settings
    plan: StackPlan
    say: Callable[[str], None]
    infra: list[embedded.EmbeddedServer] = field(default_factory=list)
    children: dict[str, ServiceProcess] = field(default_factory=dict)
    nats_url: str = ""
    redis_url: str = ""
    nats_credentials: Path | None = None
    issuer_file: Path | None = None
    _lock: IO[str] | None = None

    def acquire_state_dir(self) -> None:
        self.plan.state_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.plan.state_dir / "up.lock", "w")  # noqa: SIM115 - held for the stack's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(
                f"another `symbi up` is running with state dir {self.plan.state_dir}; stop it or use --state-dir"
            ) from None
        self._lock = lock

    def start_infra(self) -> None:
        if self.plan.nats_url:
            self.nats_url = self.plan.nats_url
            self.say(f"  nats      external {self.nats_url}")
            self.nats_credentials = self.settings.nats.credentials
            self.issuer_file = self.settings.messaging.issuer_file
        else:
            config = ""
            if self.plan.broker_auth:
                auth_dir = self.plan.state_dir / "nats-auth"
                authority = natsauth.BrokerAuthority.load_or_create(auth_dir)
                config = authority.server_config()
                self.nats_credentials = natsauth.write_creds(
                    auth_dir / "service.creds", authority.service_creds("symbi-services")
                )
                self.issuer_file = authority.issuer.to_file(auth_dir / "issuer.json")
            self.say("  nats      starting nats-server with JetStream ...")
            server = embedded.start_nats(self.plan.state_dir / "nats", config=config)
            self.infra.append(server)
            self.nats_url = server.url
            auth = "operator-mode authorization, a user per service and agent" if config else "no authorization"
            self.say(f"  nats      ready on {self.nats_url} (pid {server.process.pid}; {auth})")
        if self.plan.redis_url:
            self.redis_url = self.plan.redis_url
            self.say(f"  redis     external {self.redis_url}")
        else:
            binary = embedded.redis_server_binary()
            self.say(f"  redis     starting {binary.name} ...")
            server = embedded.start_redis(self.plan.state_dir / "redis")
            self.infra.append(server)
            self.redis_url = server.url
            self.say(f"  redis     ready on {self.redis_url} (pid {server.process.pid})")

    def service_env(self, metrics_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SYMBI_NATS_URL": self.nats_url,
                "SYMBI_REDIS_URL": self.redis_url,
                "SYMBI_STATE_DIR": str(self.plan.state_dir),
                "SYMBI_METRICS_PORT": str(metrics_port),
                "SYMBI_POLICY_PORT": str(self.plan.policy_port),
                "SYMBI_POLICY_ADDR": f"{self.settings.policy.host}:{self.plan.policy_port}",
                "SYMBI_API_PORT": str(self.plan.api_port),
            }
        )
        if self.nats_credentials is not None:
            env["SYMBI_NATS_CREDENTIALS"] = str(self.nats_credentials)
        if self.issuer_file is not None:
            env["SYMBI_MESSAGING_ISSUER_FILE"] = str(self.issuer_file)
        if self.plan.config_path is not None:
            env[envvars.CONFIG_PATH] = str(self.plan.config_path.resolve())
        if self.plan.policy_dir is not None:
            env["SYMBI_POLICY_DIR"] = str(self.plan.policy_dir)
        return env

    def spawn(self, name: str) -> ServiceProcess:
        previous = self.children.get(name)
        taken = {self.plan.api_port, self.plan.policy_port, *(c.metrics_port for c in self.children.values())}
        port = (
            previous.metrics_port if previous else embedded.free_port(self.settings.telemetry.metrics_host, avoid=taken)
        )
        argv = [sys.executable, "-m", "symbi_cli", "serve", name]
        proc = embedded.ManagedProcess(
            name, argv, self.plan.state_dir / "logs" / f"{name}.log", env=self.service_env(port)
        )
        proc.start()
        child = ServiceProcess(name, proc, port, previous.restarts + 1 if previous else 0)
        self.children[name] = child
        return child

    def start_services(self) -> None:
        for name in self.plan.services:
            child = self.spawn(name)
            self.say(f"  {name:<21} started (pid {child.process.pid}, metrics :{child.metrics_port})")

    async def wait_ready(
        self, timeout_s: float, cancelled: Callable[[], bool] = lambda: False
    ) -> dict[str, health_pb2.HealthStatus]:
        """Poll health over NATS, printing each service once it is ready; stop early if cancelled."""
        nats_settings = self.settings.nats.model_copy(
            update={"url": self.nats_url, "credentials": self.nats_credentials}
        )
        nc = await natsio.connect(nats_settings, "symbi-up")
        announced: set[str] = set()
        latest: dict[str, health_pb2.HealthStatus] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and not cancelled():
                latest = await fleet.wait_healthy(nc, self.plan.services, timeout_s=0.5)
                for name in self.plan.services:
                    status = latest.get(name)
                    if status is not None and is_ready(status) and name not in announced:
                        announced.add(name)
                        self.say(f"  {name:<21} {status_name(status.status):<9} {_describe(status)}")
                    child = self.children.get(name)
                    if child is not None and not child.process.alive():
                        return latest
                if announced >= set(self.plan.services):
                    break
        finally:
            await nc.close()
        return latest

    def api_admin_key_file(self) -> Path | None:
        """Where the API writes its bootstrap admin key (None when the key is configured, or no API runs)."""
        api = self.settings.api
        if "api" not in self.plan.services or not api.bootstrap_admin or api.admin_key is not None:
            return None
        return api.admin_key_file or self.plan.state_dir / "api" / "admin.key"

    def dead_children(self) -> list[ServiceProcess]:
        return [child for child in self.children.values() if not child.process.alive()]

    def write_state(self) -> Path:
        path = self.plan.state_dir / STATE_FILE
        doc = {
            "pid": os.getpid(),
            "nats_url": self.nats_url,
            "nats_credentials": str(self.nats_credentials) if self.nats_credentials else "",
            "redis_url": self.redis_url,
            "api_url": f"http://{self.settings.api.host}:{self.plan.api_port}",
            "policy_addr": f"{self.settings.policy.host}:{self.plan.policy_port}",
            "api_admin_key_file": str(self.api_admin_key_file() or ""),
            "infra_pids": [server.process.pid for server in self.infra],
            "services": {
                name: {"pid": child.process.pid, "metrics_port": child.metrics_port, "log": str(child.process.log_path)}
                for name, child in self.children.items()
            },
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(path)
        return path

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop services (all signalled first, then awaited), then Redis, then NATS."""
        for child in reversed(list(self.children.values())):
            child.process.signal(signal.SIGTERM)
        for child in reversed(list(self.children.values())):
            code = child.process.wait_or_kill(grace_s)
            self.say(f"  {child.name:<21} stopped (exit {code})")
        for server in reversed(self.infra):
            server.stop(grace_s)
            self.say(f"  {server.process.name:<21} stopped")
        (self.plan.state_dir / STATE_FILE).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _describe(status: health_pb2.HealthStatus) -> str:
    endpoints = " ".join(f"{key}={value}" for key, value in sorted(status.endpoints.items()) if key != "metrics")
    degraded = [f"{c.name}: {c.detail}" for c in status.components if c.status != health_pb2.SERVING_STATUS_SERVING]
    return "; ".join(part for part in (endpoints, *degraded) if part)


def running_value(state_dir: Path, key: str) -> str | None:
    """A string the running ``symbi up`` recorded in its state file (``nats_url``, ``policy_addr``, ...)."""
    state = read_state(state_dir)
    value = state.get(key) if state else None
    return value if isinstance(value, str) else None


def nats_settings_for(settings: Settings, state_dir: Path | None, url: str = "", **update: object) -> NatsSettings:
    """How a CLI command reaches NATS: ``url`` if given, else the running ``symbi up`` (its URL
    and service credentials), else ``[nats]``."""
    state = read_state(state_dir or settings.runtime.state_dir) or {}
    changes: dict[str, object] = {}
    running_url = state.get("nats_url")
    if url:
        changes["url"] = url
    elif isinstance(running_url, str) and running_url:
        changes["url"] = running_url
        creds = state.get("nats_credentials")
        if isinstance(creds, str) and creds:
            changes["credentials"] = Path(creds)
    return settings.nats.model_copy(update={**changes, **update})


def read_state(state_dir: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
