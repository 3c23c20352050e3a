"""Warm pools: containers created and started ahead of time, so a task skips the sandbox's start-up.

A warm container is created with every hardening option and the limits of a
*shape* (tier, image, memory, CPU, pids, block I/O), and started with a small stub as
PID 1 that waits on stdin. A task of the same shape takes one: its program is
written into the container's ``/symbi/task`` mount, its command, environment and
working directory are sent on stdin, and the stub ``exec``s the task in its place,
so the task is PID 1 with the same limits, exit code, OOM and timeout handling as
a cold start. Each container serves one task and is removed after it. A shape
that was used is kept warm (up to ``size`` containers per tier, the least recently
used shape making way), and the pool is topped up in the background.

Only tasks without network access, with an explicit command, in an image listed in
``[sandbox].warm_images`` (it must have ``python3`` for the stub) are served warm;
everything else starts cold. runsc cannot change a running container's limits, so
shapes must match exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests.exceptions
from docker.errors import DockerException, NotFound
from docker.models.containers import Container

from symbi_common.supervisor import Supervisor
from symbi_proto.v1 import sandbox_pb2, task_pb2

log = logging.getLogger(__name__)

STUB = (
    "import json, os, sys\n"
    "spec = json.loads(sys.stdin.readline())\n"
    "env = dict(os.environ)\n"
    "env.update(spec['env'])\n"
    "os.chdir(spec['cwd'] or '/')\n"
    "os.execvpe(spec['argv'][0], spec['argv'], env)\n"
)
LABEL_WARM = "symbi.warm"


@dataclass(frozen=True, slots=True)
class Shape:
    tier: int
    image: str
    memory_mb: int
    nano_cpus: int
    pids: int
    disk_io_mbps: int

    def template(self) -> task_pb2.Task:
        """A task of this shape, to create containers from."""
        t = task_pb2.Task(task_id="warm", agent_id="warm", attempt=1)
        t.tier = self.tier  # type: ignore[assignment]
        t.spec.image = self.image
        t.limits.memory_mb, t.limits.cpu_cores = self.memory_mb, self.nano_cpus / 1e9
        t.limits.max_pids, t.limits.disk_io_mbps = self.pids, self.disk_io_mbps
        return t


def shape_of(task: task_pb2.Task, images: frozenset[str]) -> Shape | None:
    """The task's shape, or None if it cannot be served warm."""
    spec = task.spec
    if task.network_access or spec.image not in images or not (spec.entrypoint or spec.command):
        return None
    limits = task.limits
    return Shape(task.tier, spec.image, int(limits.memory_mb), round(limits.cpu_cores * 1e9), int(limits.max_pids),
                 int(limits.disk_io_mbps))  # fmt: skip


@dataclass
class Warm:
    container: Container
    scratch: Path


Create = Callable[[task_pb2.Task, Path, dict[str, str]], Container]
"""Creates (not starts) a hardened container for a task, with its scratch mounted and extra labels."""


class WarmPool:
    def __init__(
        self,
        create: Create,
        sweep: Callable[[], int],
        scratch_root: Path,
        node: str,
        *,
        size: int,
        images: frozenset[str],
    ) -> None:
        self.create = create
        self.sweep = sweep
        self.scratch_root = scratch_root
        self.node = node
        self.size = size
        self.images = images
        self.ready: dict[Shape, list[Warm]] = {}
        self.shapes: OrderedDict[Shape, None] = OrderedDict()
        """Shapes kept warm, least recently used first."""
        self.hits = 0
        self.misses = 0
        self._filling = Supervisor(on_failure=lambda name, exc: log.warning("%s: %r", name, exc))
        self._lock = asyncio.Lock()

    def take(self, task: task_pb2.Task) -> Warm | None:
        shape = shape_of(task, self.images)
        if shape is None or self.size <= 0:
            return None
        self._use(shape)
        warm = self.ready.get(shape)
        if warm:
            self.hits += 1
            taken = warm.pop()
            self.top_up()
            return taken
        self.misses += 1
        self.top_up()
        return None

    def _use(self, shape: Shape) -> None:
        self.shapes[shape] = None
        self.shapes.move_to_end(shape)
        while sum(1 for s in self.shapes if s.tier == shape.tier) > self.size:
            oldest = next(s for s in self.shapes if s.tier == shape.tier)
            del self.shapes[oldest]
            for warm in self.ready.pop(oldest, []):
                self._filling.spawn(asyncio.to_thread(_discard, warm), name="warm-discard")

    def prewarm(self, shape: Shape) -> None:
        if self.size > 0:
            self._use(shape)
            self.top_up()

    def top_up(self) -> None:
        self._filling.spawn(self._fill(), name="warm-fill")

    async def _fill(self) -> None:
        async with self._lock:
            for shape in list(self.shapes):
                have = self.ready.setdefault(shape, [])
                want = max(1, self.size // max(1, sum(1 for s in self.shapes if s.tier == shape.tier)))
                while len(have) < want and shape in self.shapes:
                    try:
                        have.append(await asyncio.to_thread(self._make, shape))
                    except (DockerException, requests.exceptions.RequestException, OSError) as exc:
                        log.warning("cannot warm a %s container: %s", shape.image, exc)
                        return

    def _make(self, shape: Shape) -> Warm:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="warm-", dir=self.scratch_root))
        scratch.chmod(0o755)
        try:
            container = self.create(shape.template(), scratch, {LABEL_WARM: "true"})
            container.start()
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return Warm(container, scratch)

    def stats(self) -> list[task_pb2.WarmPool]:
        out = []
        for tier in (sandbox_pb2.SANDBOX_TIER_TIER1_DOCKER, sandbox_pb2.SANDBOX_TIER_TIER2_GVISOR):
            ready = sum(len(w) for s, w in self.ready.items() if s.tier == tier)
            out.append(task_pb2.WarmPool(tier=tier, ready=ready, target=self.size))
        return out

    async def close(self) -> None:
        """Remove every warm container, including one a cancelled top-up was still creating."""
        await self._filling.aclose(5)
        every = [w for warm in self.ready.values() for w in warm]
        self.ready.clear()
        await asyncio.gather(*(asyncio.to_thread(_discard, w) for w in every))
        if self.size:
            with contextlib.suppress(DockerException, requests.exceptions.RequestException):
                await asyncio.to_thread(self.sweep)
            shutil.rmtree(self.scratch_root, ignore_errors=True)


def deliver(warm: Warm, task: task_pb2.Task) -> None:
    """Hand the task to the waiting stub (blocking): its program first, then its command on stdin."""
    spec = task.spec
    if spec.script:
        program = warm.scratch / "script.py"
        program.write_text(spec.script, encoding="utf-8")
        program.chmod(0o644)
    line = json.dumps({"argv": [*spec.entrypoint, *spec.command], "env": dict(spec.env), "cwd": spec.working_dir})
    attached = warm.container.attach_socket(params={"stdin": 1, "stream": 1})
    raw: socket.socket = getattr(attached, "_sock", attached)
    try:
        raw.sendall(line.encode() + b"\n")
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_WR)
    finally:
        raw.close()


def _discard(warm: Warm) -> None:
    with contextlib.suppress(NotFound, DockerException, requests.exceptions.RequestException):
        warm.container.remove(force=True)
    shutil.rmtree(warm.scratch, ignore_errors=True)


__all__ = ["STUB", "Shape", "Warm", "WarmPool", "deliver", "shape_of"]
