"""Tasks in real containers, under runc (Tier 1) and runsc (gVisor, Tier 2), through the worker over NATS.

Each isolation property is proved from inside the container; each kind of bad task
(out of memory, never ending, fork bomb, flood of output, unknown image, writes to
read-only paths, network attempts) is contained, reported distinctly and leaves no
container behind. Needs the Docker engine `scripts/test.sh` sets up; these tests
fail, never skip, without it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import docker
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from symbi_testing.checks import eventually
from symbi_testing.fixtures import RunService

from symbi_common import natsio, subjects
from symbi_common.ids import new_id
from symbi_common.settings import Settings
from symbi_proto.v1 import sandbox_pb2, task_pb2
from symbi_sandbox_orchestrator.docker_runner import LABEL_NODE
from symbi_sandbox_orchestrator.service import SPEC

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
T = task_pb2
ROOT = Path(__file__).resolve().parents[3]
IMAGE = "symbi/base:bookworm"
NODE = "docker-test"
TIERS = {"runc": sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, "runsc": sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR}
R = TypeVar("R", bound=Message)

PROBE = r"""
import json, os, socket, subprocess
out = {}
status = {l.split(':')[0]: l.split(':', 1)[1].strip() for l in open('/proc/self/status') if ':' in l}
out['cap_eff'] = status.get('CapEff')
out['uid'] = os.getuid()
for path in ('/etc/symbi-test', '/usr/bin/symbi-test', '/symbi-test'):
    try:
        open(path, 'w').write('x')
        out.setdefault('writable', []).append(path)
    except OSError:
        pass
open('/tmp/scratch', 'w').write('ok')
out['tmp_writable'] = open('/tmp/scratch').read() == 'ok'
os.chmod('/tmp/scratch', 0o755)
try:
    subprocess.run(['/tmp/scratch'], check=False)
    out['tmp_exec'] = True
except OSError:
    out['tmp_exec'] = False
out['interfaces'] = sorted(os.listdir('/sys/class/net')) if os.path.isdir('/sys/class/net') else []
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2)
    out['network'] = 'open'
except OSError as exc:
    out['network'] = exc.strerror or str(exc)
out['version'] = open('/proc/version').read().strip()
out['script_dir'] = os.path.exists('/symbi/task/script.py')
print(json.dumps(out))
"""


def task(
    command: list[str],
    tier: int,
    *,
    memory: int = 128,
    timeout_s: float = 30,
    image: str = IMAGE,
    script: str = "",
    output_cap: int = 0,
    pids: int = 0,
) -> task_pb2.Task:
    t = T.Task(task_id=new_id(), agent_id="agent-docker", attempt=1)
    t.tier = tier  # type: ignore[assignment]
    t.limits.memory_mb, t.limits.cpu_cores = memory, 0.5
    t.limits.execution_timeout.FromMilliseconds(int(timeout_s * 1000))
    t.limits.max_output_bytes = output_cap
    t.limits.max_pids = pids
    t.spec.image = image
    t.spec.command.extend(command)
    t.spec.script = script
    return t


async def ask(nc: Client, operation: str, message: Message, reply: type[R], timeout: float = 60) -> R:
    return await natsio.request(nc, subjects.sandbox(NODE, operation), message, reply, timeout=timeout)


def containers_left() -> list[str]:
    client = docker.from_env()
    try:
        return [c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={NODE}"})]
    finally:
        client.close()


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The base image, built locally if missing (never pulled)."""
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / "scripts" / "build-images.sh"), "base"], check=True, timeout=900)
    finally:
        client.close()
    return IMAGE


@pytest_asyncio.fixture
async def worker(run_service: RunService, settings: Settings, sandbox_image: str) -> AsyncIterator[None]:
    await run_service(
        SPEC,
        settings.with_overrides(
            {"sandbox.runner": "docker", "sandbox.node": NODE, "sandbox.memory_mb": 4096, "sandbox.cpu_cores": 2}
        ),
    )
    yield
    assert containers_left() == []  # whatever the task did, its container is gone


class Run:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.output = {1: bytearray(), 2: bytearray()}

    async def __call__(self, t: task_pb2.Task, timeout_s: float = 90) -> task_pb2.TaskStatusReport:
        inbox = self.nc.new_inbox()

        async def collect(msg: Msg) -> None:
            chunk = T.TaskOutput.FromString(msg.data)
            self.output[chunk.stream][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data

        sub = await self.nc.subscribe(inbox, cb=collect)
        reply = await ask(self.nc, "start", T.StartTaskRequest(task=t, output_subject=inbox), T.StartTaskResponse)
        if not reply.accepted:
            await sub.unsubscribe()
            return reply.status
        final = T.TaskStatusReport()

        async def ended() -> bool:
            final.CopyFrom(await ask(self.nc, "status", T.TaskStatusRequest(task_id=t.task_id), T.TaskStatusReport))
            return final.state in (T.TASK_STATE_SUCCEEDED, T.TASK_STATE_FAILED, T.TASK_STATE_CANCELLED)

        await eventually(ended, timeout_s=timeout_s, what=f"task {t.task_id} ends")
        await eventually(lambda: not containers_left(), timeout_s=30, what="its container is removed")
        await sub.unsubscribe()
        return final

    def stdout(self) -> str:
        return self.output[1].decode(errors="replace")


@pytest.fixture
def run(nc: Client, worker: None) -> Run:
    return Run(nc)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_isolation_holds_inside_the_container(run: Run, runtime: str) -> None:
    final = await run(task(["python3", "/symbi/task/script.py"], TIERS[runtime], script=PROBE))
    assert final.state == T.TASK_STATE_SUCCEEDED, (final.detail, run.output)
    assert (final.runtime, final.exit_code) == (runtime, 0)
    seen = json.loads(run.stdout())
    assert seen["cap_eff"] == "0000000000000000"  # every capability dropped
    assert seen["uid"] == 65534  # not root
    assert "writable" not in seen  # the root filesystem is read-only
    assert seen["tmp_writable"]
    assert not seen["tmp_exec"]  # scratch space is noexec
    assert seen["interfaces"] == ["lo"]  # no network
    assert seen["network"] in ("Network is unreachable", "No route to host")
    assert seen["script_dir"]  # the program is mounted read-only
    host_version = Path("/proc/version").read_text().strip()
    if runtime == "runsc":
        assert seen["version"] != host_version  # a different kernel answers: gVisor's
        assert "4.4.0" in seen["version"]
    else:
        assert seen["version"] == host_version  # runc shares the host kernel
    assert final.usage.wall_time.ToNanoseconds() > 0
    assert final.output_bytes == len(run.output[1]) + len(run.output[2])


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_limits_are_enforced_inside(run: Run, runtime: str) -> None:
    script = (
        "import os\n"
        "print(open('/sys/fs/cgroup/memory.max').read().strip() if os.path.exists('/sys/fs/cgroup/memory.max')"
        " else 'none')\n"
    )
    final = await run(task(["python3", "/symbi/task/script.py"], TIERS[runtime], memory=96, script=script))
    assert final.state == T.TASK_STATE_SUCCEEDED, final.detail
    limit = run.stdout().strip()
    if limit != "none":  # cgroup v2 visible inside (runc); gVisor keeps the limit outside
        assert int(limit) == 96 * 1024 * 1024


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_running_out_of_memory_is_an_oom_kill(run: Run, runtime: str) -> None:
    hog = "x = []\nwhile True:\n    x.append(bytearray(4 * 1024 * 1024))\n"
    final = await run(task(["python3", "/symbi/task/script.py"], TIERS[runtime], memory=64, script=hog, timeout_s=20))
    assert final.state == T.TASK_STATE_FAILED
    assert final.exit_reason in (T.TASK_EXIT_REASON_OOM_KILLED, T.TASK_EXIT_REASON_TIMED_OUT), final.detail
    if runtime == "runc":
        assert final.exit_reason == T.TASK_EXIT_REASON_OOM_KILLED
        assert final.detail == "killed: out of memory (64 MiB)"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_task_that_never_ends_is_killed_at_its_timeout(run: Run, runtime: str) -> None:
    final = await run(task(["sleep", "3600"], TIERS[runtime], timeout_s=2))
    assert (final.state, final.exit_reason) == (T.TASK_STATE_FAILED, T.TASK_EXIT_REASON_TIMED_OUT)
    assert final.detail == "killed after 2s"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_fork_bomb_is_contained(run: Run, runtime: str) -> None:
    bomb = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', children, exc.strerror, flush=True)\n"
        "    os._exit(9)\n"
    )
    final = await run(task(["python3", "/symbi/task/script.py"], TIERS[runtime], script=bomb, pids=100, timeout_s=20))
    assert final.state == T.TASK_STATE_FAILED
    assert final.exit_reason == T.TASK_EXIT_REASON_EXITED
    if runtime == "runc":  # the process sees fork fail at the pids limit
        assert final.exit_code == 9, (final.detail, run.stdout())
        assert int(run.stdout().split()[2]) < 100
    else:  # gVisor's own threads count against the limit: the whole sandbox ends, and says so
        assert final.exit_code != 0


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_flood_of_output_is_cut_and_killed(run: Run, runtime: str) -> None:
    flood = ["python3", "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"]
    final = await run(task(flood, TIERS[runtime], output_cap=200_000, timeout_s=30))
    assert (final.state, final.exit_reason) == (T.TASK_STATE_FAILED, T.TASK_EXIT_REASON_OUTPUT_LIMIT)
    assert final.output_truncated
    assert final.output_bytes == 200_000
    assert len(run.output[1]) == 200_000


async def test_exit_codes_and_read_only_writes_are_reported(run: Run) -> None:
    final = await run(task(["sh", "-c", "echo oops >&2; exit 7"], TIERS["runc"]))
    assert (final.state, final.exit_reason, final.exit_code) == (T.TASK_STATE_FAILED, T.TASK_EXIT_REASON_EXITED, 7)
    assert run.output[2] == b"oops\n"
    write = await run(task(["sh", "-c", "echo x > /usr/lib/planted"], TIERS["runsc"]))
    assert write.state == T.TASK_STATE_FAILED
    assert write.exit_code != 0


async def test_network_attempts_fail_under_both_runtimes(run: Run) -> None:
    probe = ["python3", "-c", "import socket; socket.create_connection(('93.184.216.34', 80), timeout=3)"]
    for runtime in ("runc", "runsc"):
        final = await run(task(probe, TIERS[runtime]))
        assert final.state == T.TASK_STATE_FAILED, runtime
        assert final.exit_code == 1


async def test_an_unknown_image_is_refused_clearly(nc: Client, worker: None) -> None:
    t = task(["true"], TIERS["runc"], image="symbi/does-not-exist:1")
    reply = await ask(nc, "start", T.StartTaskRequest(task=t), T.StartTaskResponse)
    assert not reply.accepted
    assert reply.error.code == "failed_precondition"
    assert "image symbi/does-not-exist:1 is not on node docker-test" in reply.error.message
    assert "never pulled" in reply.error.message
    assert reply.status.exit_reason == T.TASK_EXIT_REASON_START_FAILED


async def test_impossible_limits_are_refused_by_docker(nc: Client, worker: None) -> None:
    t = task(["true"], TIERS["runc"], memory=4)  # below Docker's minimum of 6 MiB
    reply = await ask(nc, "start", T.StartTaskRequest(task=t), T.StartTaskResponse)
    assert not reply.accepted
    assert "Docker refused the container" in reply.error.message


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_stop_returns_once_the_container_is_gone(nc: Client, worker: None, runtime: str) -> None:
    t = task(["sleep", "3600"], TIERS[runtime])
    assert (await ask(nc, "start", T.StartTaskRequest(task=t), T.StartTaskResponse)).accepted
    request = T.StopTaskRequest(task_id=t.task_id, reason=T.STOP_REASON_CANCELLED)
    request.grace_period.FromSeconds(1)
    reply = await ask(nc, "stop", request, T.StopTaskResponse)
    assert reply.stopped
    assert (reply.status.state, reply.status.exit_reason) == (T.TASK_STATE_CANCELLED, T.TASK_EXIT_REASON_STOPPED)
    assert containers_left() == []  # confirmed means gone, at the moment of the reply


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_a_warm_container_runs_the_task_as_a_cold_one_would(
    run_service: RunService, settings: Settings, nc: Client, sandbox_image: str, runtime: str
) -> None:
    await run_service(
        SPEC,
        settings.with_overrides(
            {"sandbox.runner": "docker", "sandbox.node": NODE, "sandbox.warm_pool": 1, "sandbox.memory_mb": 4096}
        ),
    )
    reports: list[task_pb2.WorkerCapacity] = []

    async def on_capacity(msg: Msg) -> None:
        reports.append(T.WorkerCapacity.FromString(msg.data))

    await nc.subscribe(subjects.worker_capacity(NODE), cb=on_capacity)

    async def warm_ready() -> bool:
        client = docker.from_env()
        try:
            found = client.containers.list(filters={"label": [f"{LABEL_NODE}={NODE}", "symbi.warm=true"]})
        finally:
            client.close()
        return len(found) >= 2  # one per tier, started and waiting

    await eventually(warm_ready, timeout_s=60, what="the pool is warm")
    t = task(
        ["python3", "/symbi/task/script.py", "arg"],
        TIERS[runtime],
        memory=256,
        script=PROBE + "import sys\nprint(sys.argv[1:])\n",
    )
    t.limits.cpu_cores = 0.5
    t.spec.env["GREETING"] = "warm"
    inbox = nc.new_inbox()
    chunks: list[bytes] = []

    async def collect(msg: Msg) -> None:
        chunks.append(T.TaskOutput.FromString(msg.data).data)

    await nc.subscribe(inbox, cb=collect)
    reply = await ask(nc, "start", T.StartTaskRequest(task=t, output_subject=inbox), T.StartTaskResponse)
    assert reply.accepted
    assert reply.status.detail == "running (warm)"
    final = T.TaskStatusReport()

    async def ended() -> bool:
        final.CopyFrom(await ask(nc, "status", T.TaskStatusRequest(task_id=t.task_id), T.TaskStatusReport))
        return final.state == T.TASK_STATE_SUCCEEDED

    await eventually(ended, timeout_s=60, what="the warm task ends")
    lines = b"".join(chunks).decode().splitlines()
    seen = json.loads(lines[0])
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["uid"] == 65534
    assert "writable" not in seen
    assert seen["interfaces"] == ["lo"]
    assert seen["script_dir"]
    assert lines[1] == "['arg']"

    def refilled() -> bool:
        pools = {p.tier: p for p in reports[-1].warm_pools} if reports else {}
        pool = pools.get(TIERS[runtime])
        return pool is not None and pool.target == 1 and pool.ready >= 1

    await eventually(refilled, timeout_s=60, what="the used warm container is replaced, and reported")


async def test_containers_a_crashed_orchestrator_left_are_removed_at_start(
    run_service: RunService, settings: Settings, sandbox_image: str
) -> None:
    client = docker.from_env()
    try:
        client.containers.create(
            IMAGE, command=["sleep", "600"], labels={LABEL_NODE: NODE}, name=f"leftover-{new_id()}"
        )
        assert len(containers_left()) == 1
        await run_service(SPEC, settings.with_overrides({"sandbox.runner": "docker", "sandbox.node": NODE}))
        assert containers_left() == []
    finally:
        client.close()


async def test_block_io_limits_are_set_on_the_disk_holding_docker_data(nc: Client, worker: None) -> None:
    t = task(["sleep", "600"], TIERS["runc"])
    t.limits.disk_io_mbps = 10
    assert (await ask(nc, "start", T.StartTaskRequest(task=t), T.StartTaskResponse)).accepted
    client = docker.from_env()
    try:
        (container,) = client.containers.list(filters={"label": f"symbi.task={t.task_id}"})
        host = container.attrs["HostConfig"]
        assert host["BlkioDeviceReadBps"] == host["BlkioDeviceWriteBps"]
        (limit,) = host["BlkioDeviceReadBps"]
        assert limit["Rate"] == 10_000_000
        assert limit["Path"].startswith("/dev/")
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["NetworkMode"] == "none"
        assert host["PidsLimit"] == 256
    finally:
        client.close()
    stop = T.StopTaskRequest(task_id=t.task_id, reason=T.STOP_REASON_CANCELLED)
    stop.grace_period.FromSeconds(1)
    assert (await ask(nc, "stop", stop, T.StopTaskResponse)).stopped
