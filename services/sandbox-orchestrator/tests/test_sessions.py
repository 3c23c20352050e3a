"""Sandbox sessions in real containers (runc and runsc): stdin and output over NATS, hardening,
mounts, the lease, close and exit, each leaving no container behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

from symbi_common import natsio, subjects
from symbi_common.errors import FailedPreconditionError, InvalidArgumentError
from symbi_common.ids import new_id
from symbi_common.settings import Settings
from symbi_proto.v1 import sandbox_pb2, session_pb2
from symbi_sandbox_orchestrator.docker_runner import LABEL_NODE
from symbi_sandbox_orchestrator.service import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
S = session_pb2
NODE = "session-test"
IMAGE = "symbi/base:bookworm"
TIERS = {"runc": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "runsc": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}

PROGRAM = r"""
import json, os, socket, sys
for line in sys.stdin:
    word = line.strip()
    if word == "probe":
        status = {l.split(':')[0]: l.split(':', 1)[1].strip() for l in open('/proc/self/status') if ':' in l}
        try:
            socket.create_connection(('1.1.1.1', 53), timeout=1)
            network = 'open'
        except OSError as exc:
            network = exc.strerror or str(exc)
        mounted = sorted(os.listdir(os.environ['MOUNTED'])) if os.environ.get('MOUNTED') else []
        try:
            import mcp
            sdk = True
        except ImportError:
            sdk = False
        print(json.dumps({'uid': os.getuid(), 'cap_eff': status.get('CapEff'), 'network': network,
                          'mounted': mounted, 'sdk': sdk, 'hostname': socket.gethostname()}), flush=True)
    elif word.startswith('exit'):
        sys.exit(int(word.split()[1]))
    else:
        print('echo ' + word, flush=True)
        print('to stderr', file=sys.stderr, flush=True)
"""


def containers_left() -> list[str]:
    client = docker.from_env()
    try:
        return [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={NODE}"})]
    finally:
        client.close()


@pytest_asyncio.fixture
async def orchestrator(run_service: RunService, settings: Settings, tmp_path: Path) -> AsyncIterator[Path]:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("visible")
    shared.chmod(0o755)
    tmp_path.chmod(0o755)
    overrides = {"sandbox.runner": "docker", "sandbox.node": NODE, "sandbox.memory_mb": 4096, "sandbox.cpu_cores": 2,
                 "sandbox.session_mount_roots": [str(shared)], "sandbox.max_sessions": 4}  # fmt: skip
    await run_service(SPEC, settings.with_overrides(overrides))
    yield shared
    await eventually(lambda: not containers_left(), timeout_s=30, what="no session container left")


class Client_:
    """One session as a test drives it: open, write lines, read output."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.session_id = new_id()
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.stderr = bytearray()
        self.ended: S.SessionOutput | None = None
        self.sequences: list[int] = []
        self._buffer = b""

    async def open(self, tier: int, *, env: dict[str, str] | None = None, **kw: object) -> S.SandboxSession:
        async def collect(msg: Msg) -> None:
            chunk = S.SessionOutput.FromString(msg.data)
            self.sequences.append(chunk.sequence)
            if chunk.ended:
                self.ended = chunk
            elif chunk.stream == 2:
                self.stderr += chunk.data
            else:
                self._buffer += chunk.data
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    self.lines.put_nowait(line.decode())

        await self.nc.subscribe(subjects.sandbox_session_output(NODE, self.session_id), cb=collect)
        req = S.OpenSessionRequest(session_id=self.session_id, owner="pytest", tier=tier, **kw)  # type: ignore[arg-type]
        req.spec.image = IMAGE
        req.spec.entrypoint.extend(["python3", "/symbi/task/script.py"])
        req.spec.script = PROGRAM
        req.spec.env.update(env or {})
        req.limits.memory_mb, req.limits.cpu_cores = 128, 0.5
        return await natsio.request(self.nc, subjects.sandbox_session(NODE, "open"), req, S.SandboxSession, timeout=60)

    async def say(self, line: str) -> str:
        message = S.SessionInput(session_id=self.session_id, data=(line + "\n").encode())
        await natsio.request(self.nc, subjects.sandbox_session_stdin(NODE, self.session_id), message,
                             S.SessionInputAck, timeout=10)  # fmt: skip
        if line.startswith("exit"):
            return ""
        return await asyncio.wait_for(self.lines.get(), 30)

    async def close(self) -> S.CloseSessionResponse:
        req = S.CloseSessionRequest(session_id=self.session_id)
        return await natsio.request(self.nc, subjects.sandbox_session(NODE, "close"), req, S.CloseSessionResponse,
                                    timeout=60)  # fmt: skip


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_session_talks_over_nats_inside_a_hardened_container(
    nc: Client, orchestrator: Path, runtime: str
) -> None:
    session = Client_(nc)
    mount = S.SessionMount(host_path=str(orchestrator), container_path="/data")
    info = await session.open(TIERS[runtime], mounts=[mount], python_packages=True)
    assert info.runtime == runtime
    assert info.state == S.SESSION_STATE_RUNNING
    assert await session.say("hello") == "echo hello"
    inspected = await _inspect(info.sandbox_id)
    host = inspected["HostConfig"]
    assert host["ReadonlyRootfs"]
    assert host["CapDrop"] == ["ALL"]
    assert host["NetworkMode"] == "none"
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Runtime"] == runtime
    assert inspected["Config"]["User"] == "65534:65534"
    assert all(m["RW"] is False for m in inspected["Mounts"])
    await session.say("exit 0")  # nothing more: stdin stays open, the next probe is read
    await eventually(lambda: session.ended is not None, timeout_s=60, what="the session ends")
    assert session.ended is not None
    assert session.ended.exit_code == 0
    assert "exited with 0" in session.ended.detail
    assert session.sequences == list(range(1, len(session.sequences) + 1)), "output numbered without gaps"
    assert b"to stderr" in session.stderr
    await eventually(lambda: not containers_left(), timeout_s=30, what="its container is removed")


async def test_the_program_sees_its_mounts_and_sdk_and_nothing_else(nc: Client, orchestrator: Path) -> None:
    session = Client_(nc)
    mount = S.SessionMount(host_path=str(orchestrator), container_path="/data")
    info = await session.open(TIERS["runc"], env={"MOUNTED": "/data"}, mounts=[mount], python_packages=True)
    inspected = await _inspect(info.sandbox_id)
    assert any(e.startswith("PYTHONPATH=/symbi/python") for e in inspected["Config"]["Env"])
    seen = json.loads(await session.say("probe"))
    assert seen["uid"] == 65534
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["network"] in ("Network is unreachable", "No route to host")
    assert seen["sdk"], "the orchestrator's packages (the mcp SDK) are importable"
    assert seen["mounted"] == ["data.txt"]
    assert (await session.close()).closed


async def test_close_removes_the_container_and_stdin_is_refused_after(nc: Client, orchestrator: Path) -> None:
    session = Client_(nc)
    info = await session.open(TIERS["runc"])
    assert await session.say("one") == "echo one"
    assert (await session.close()).closed
    assert info.sandbox_id not in containers_left()
    await eventually(lambda: session.ended is not None, timeout_s=10, what="the end is published")
    assert session.ended is not None
    assert session.ended.detail == "closed"
    with pytest.raises(Exception, match=r"no service is listening|has ended"):
        await session.say("two")


async def test_a_lapsed_lease_removes_the_session(nc: Client, orchestrator: Path) -> None:
    session = Client_(nc)
    lease = S.OpenSessionRequest().lease
    lease.FromSeconds(1)
    await session.open(TIERS["runc"], lease=lease)
    await eventually(lambda: session.ended is not None, timeout_s=30, what="the lease lapses")
    assert session.ended is not None
    assert session.ended.detail == "lease lapsed"


async def test_mounts_outside_the_allowed_roots_are_refused(nc: Client, orchestrator: Path) -> None:
    session = Client_(nc)
    for mount in (S.SessionMount(host_path="/etc", container_path="/data"),
                  S.SessionMount(host_path=str(orchestrator), container_path="/symbi/task")):  # fmt: skip
        with pytest.raises(InvalidArgumentError):
            await session.open(TIERS["runc"], mounts=[mount])
    with pytest.raises(FailedPreconditionError, match="no session"):
        await natsio.request(nc, subjects.sandbox_session(NODE, "renew"), S.RenewSessionRequest(session_id="x"),
                             S.SandboxSession, timeout=5)  # fmt: skip


async def _inspect(name: str) -> Any:
    def get() -> Any:
        client = docker.from_env()
        try:
            return client.api.inspect_container(name)
        finally:
            client.close()

    return await asyncio.to_thread(get)
