"""Managed processes: readiness by polling, early failure, and clean stops."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from symbi_common import embedded
from symbi_common.errors import UnavailableError

pytestmark = pytest.mark.integration


def test_process_group_is_stopped_with_its_children(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc = embedded.ManagedProcess("sleepy", [sys.executable, "-c", script], tmp_path / "sleepy.log")
    proc.start()
    embedded.wait_until(lambda: "up" in proc.tail(), timeout_s=10, what="sleepy", process=proc)
    children = [int(p) for p in os.popen(f"pgrep -g {proc.pid}").read().split()]
    assert len(children) == 2
    assert proc.stop(grace_s=5) is not None
    time.sleep(0.1)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_wait_until_fails_early_when_the_process_dies(tmp_path: Path) -> None:
    proc = embedded.ManagedProcess(
        "dies", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"], tmp_path / "d.log"
    )
    proc.start()
    started = time.monotonic()
    with pytest.raises(UnavailableError, match=r"dies exited with code 3\nbad flag"):
        embedded.wait_until(lambda: False, timeout_s=30, what="dies", process=proc)
    assert time.monotonic() - started < 10


def test_nats_and_redis_start_and_stop(tmp_path: Path) -> None:
    nats = embedded.start_nats(tmp_path / "nats")
    redis = embedded.start_redis(tmp_path / "redis")
    try:
        assert nats.url.startswith("nats://127.0.0.1:")
        assert redis.url.startswith("redis://127.0.0.1:")
        assert nats.process.alive()
        assert redis.process.alive()
        assert (tmp_path / "nats" / "jetstream").is_dir()
    finally:
        nats.stop(5)
        redis.stop(5)
    assert not nats.process.alive()
    assert not redis.process.alive()


def test_port_helpers() -> None:
    port = embedded.free_port()
    assert not embedded.port_in_use("127.0.0.1", port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert embedded.port_in_use("127.0.0.1", port)


def test_a_process_asked_to_stop_is_signalled_once(tmp_path: Path) -> None:
    # Like a service: the first SIGTERM starts a graceful shutdown, after which the
    # default disposition is back, so a second SIGTERM would kill it mid-exit.
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "    time.sleep(0.5)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = embedded.ManagedProcess("graceful", [sys.executable, "-c", script], tmp_path / "g.log")
    proc.start()
    embedded.wait_until(lambda: "up" in proc.tail(), timeout_s=10, what="graceful", process=proc)
    proc.signal(signal.SIGTERM)
    assert proc.wait_or_kill(grace_s=10) == 0


def test_free_ports_avoid_those_already_handed_out() -> None:
    chosen: set[int] = set()
    for _ in range(50):
        port = embedded.free_port(avoid=chosen)
        assert port not in chosen
        chosen.add(port)
