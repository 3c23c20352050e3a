"""A sandbox session in Docker: a hardened container with its stdin, stdout and stderr attached.

The container gets the task hardening of ``docker_runner.hardening`` (read-only root,
no capabilities, no new privileges, user 65534, no network, memory/CPU/pids/block-I/O
limits, a ``noexec`` tmpfs) under the tier's runtime (runc or runsc), plus
``stdin_open``. Read-only bind mounts: the program (``script`` -> ``/symbi/task``), the
orchestrator's own Python packages at ``/symbi/python`` when asked (so a Python MCP
server finds its SDK without pulling anything), and directories under
``[sandbox].session_mount_roots``.

The attached socket carries Docker's multiplexed stream (8-byte frame headers: stream
and length). One thread reads it and hands frames to the event loop in order; writes
go through ``asyncio.to_thread`` under a lock. When the stream ends the container's
exit code is read, the container removed, and ``on_end`` told why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests.exceptions
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from symbi_proto.v1 import session_pb2, task_pb2
from symbi_sandbox_orchestrator.docker_runner import LABEL_NODE, SCRIPT_DIR, DockerRunner, hardening

log = logging.getLogger(__name__)

LABEL_SESSION = "symbi.session"
PYTHON_DIR = "/symbi/python"
RESERVED = ("/symbi", "/proc", "/sys", "/dev", "/tmp")  # noqa: S108 - paths inside the container
READ_CHUNK = 64 * 1024
DEFAULT_MEMORY_MB = 256
DEFAULT_CPU = 0.5
DEFAULT_PIDS = 128

OnFrame = Callable[[int, bytes], None]
OnEnd = Callable[[int | None, str], None]


def python_packages() -> list[str]:
    """Directories holding this interpreter's installed packages (site-packages)."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def checked_mounts(mounts: Sequence[session_pb2.SessionMount], roots: Sequence[Path]) -> dict[str, dict[str, str]]:
    """Docker volume options for the requested mounts; anything outside ``roots`` is refused."""
    allowed = [Path(os.path.realpath(r)) for r in roots]
    out: dict[str, dict[str, str]] = {}
    for mount in mounts:
        host = Path(os.path.realpath(mount.host_path))
        inside = mount.container_path
        if not mount.host_path.startswith("/") or not any(host == r or r in host.parents for r in allowed):
            raise InvalidArgumentError(f"{mount.host_path!r} is not under [sandbox].session_mount_roots")
        if (
            not inside.startswith("/")
            or ".." in inside.split("/")
            or any(inside == r or inside.startswith(r + "/") for r in RESERVED)
        ):
            raise InvalidArgumentError(f"container path {inside!r} is not allowed")
        if not host.exists():
            raise InvalidArgumentError(f"{mount.host_path!r} does not exist on this node")
        out[str(host)] = {"bind": inside, "mode": "ro"}
    return out


def as_task(req: session_pb2.OpenSessionRequest) -> task_pb2.Task:
    """The session as a task, for ``hardening`` (limits defaulted, never any network)."""
    task = task_pb2.Task(task_id=req.session_id, agent_id=req.agent_id or req.owner or "session", attempt=1)
    task.tier = req.tier
    task.limits.CopyFrom(req.limits)
    task.limits.memory_mb = task.limits.memory_mb or DEFAULT_MEMORY_MB
    task.limits.cpu_cores = task.limits.cpu_cores or DEFAULT_CPU
    task.limits.max_pids = task.limits.max_pids or DEFAULT_PIDS
    task.network_access = False
    return task


class DockerSession:
    """One session's container and the thread that follows its output."""

    def __init__(self, container: Container, runtime: str, scratch: Path | None, loop: asyncio.AbstractEventLoop,
                 on_frame: OnFrame, on_end: OnEnd) -> None:  # fmt: skip
        self.container = container
        self.runtime = runtime
        self.sandbox_id = container.name or container.id or ""
        self.scratch = scratch
        self.loop = loop
        self.on_frame = on_frame
        self.on_end = on_end
        self.written = 0
        self._sock: socket.socket | None = None
        self._write_lock = asyncio.Lock()
        self._closing = threading.Event()
        self._gone = threading.Event()

    def attach(self) -> None:
        attached: Any = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self._sock = getattr(attached, "_sock", attached)

    def begin(self) -> None:
        threading.Thread(target=self._follow, name=f"session-{self.sandbox_id}", daemon=True).start()

    def _follow(self) -> None:
        sock = self._sock
        assert sock is not None
        buffer = b""
        try:
            while True:
                data = sock.recv(READ_CHUNK)
                if not data:
                    break
                buffer += data
                while len(buffer) >= 8:
                    stream, size = buffer[0], struct.unpack(">I", buffer[4:8])[0]
                    if len(buffer) < 8 + size:
                        break
                    frame, buffer = buffer[8 : 8 + size], buffer[8 + size :]
                    self.loop.call_soon_threadsafe(self.on_frame, 2 if stream == 2 else 1, frame)
        except OSError as exc:
            if not self._closing.is_set():
                log.warning("session %s: output stream failed: %s", self.sandbox_id, exc)
        code, detail = self._finish()
        self.loop.call_soon_threadsafe(self.on_end, code, detail)

    def _finish(self) -> tuple[int | None, str]:
        code: int | None = None
        detail = "closed"
        try:
            result = self.container.wait(timeout=30)
            code = int(result.get("StatusCode", -1))
            if not self._closing.is_set():
                detail = f"the process exited with {code}"
        except (DockerException, requests.exceptions.RequestException) as exc:
            detail = f"lost track of the container: {exc}"
        self._remove()
        return code, detail

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
        for _ in range(3):
            try:
                self.container.remove(force=True)
                break
            except NotFound:
                break
            except (DockerException, requests.exceptions.RequestException) as exc:
                log.warning("cannot remove session container %s yet: %s", self.sandbox_id, exc)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self._gone.set()

    async def write(self, data: bytes, eof: bool) -> int:
        sock = self._sock
        if sock is None or self._gone.is_set():
            raise FailedPreconditionError(f"session {self.sandbox_id} has ended")
        async with self._write_lock:
            try:
                if data:
                    await asyncio.to_thread(sock.sendall, data)
                if eof:
                    await asyncio.to_thread(sock.shutdown, socket.SHUT_WR)
            except OSError as exc:
                raise FailedPreconditionError(f"session {self.sandbox_id}: stdin closed ({exc})") from None
            self.written += len(data)
            return self.written

    async def stop(self, grace_s: float) -> bool:
        """Close stdin and wait up to ``grace_s`` (the MCP way to end a stdio server), then SIGTERM and
        SIGKILL a second later (the process is PID 1, which ignores signals it has no handler for).
        True once the container is gone."""
        self._closing.set()
        if grace_s > 0 and self._sock is not None and not self._gone.is_set():
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._sock.shutdown, socket.SHUT_WR)
            await asyncio.to_thread(self._gone.wait, grace_s)
        if not self._gone.is_set():
            with contextlib.suppress(NotFound, DockerException, requests.exceptions.RequestException):
                await asyncio.to_thread(self.container.stop, timeout=1)
        return await asyncio.to_thread(self._gone.wait, 30)


def start_session(
    runner: DockerRunner,
    req: session_pb2.OpenSessionRequest,
    mount_roots: Sequence[Path],
    loop: asyncio.AbstractEventLoop,
    on_frame: OnFrame,
    on_end: OnEnd,
) -> DockerSession:
    """Create, attach and start the session's container (blocking: run it in a thread)."""
    runtime = runner.runtime_for(req.tier)
    spec = req.spec
    if not spec.image or not (spec.entrypoint or spec.command):
        raise InvalidArgumentError("a session needs an image and a command")
    volumes = checked_mounts(req.mounts, mount_roots)
    environment = dict(spec.env)
    if req.python_packages:
        for index, path in enumerate(python_packages()):
            volumes[path] = {"bind": f"{PYTHON_DIR}/{index}", "mode": "ro"}
        environment["PYTHONPATH"] = ":".join(f"{PYTHON_DIR}/{i}" for i in range(len(python_packages())))
        environment.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    scratch: Path | None = None
    if spec.script:
        runner.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"session-{req.session_id}-", dir=runner.scratch_root))
        (scratch / "script.py").write_text(spec.script, encoding="utf-8")
        scratch.chmod(0o755)
        (scratch / "script.py").chmod(0o644)
        volumes[str(scratch)] = {"bind": SCRIPT_DIR, "mode": "ro"}
    options = hardening(as_task(req), runtime, runner.io_device)
    options["labels"] = {**options["labels"], LABEL_NODE: runner.node, LABEL_SESSION: req.session_id,
                         "symbi.owner": req.owner, **dict(req.labels)}  # fmt: skip
    client = runner.client
    try:
        client.images.get(spec.image)
        container = client.containers.create(
            spec.image,
            entrypoint=list(spec.entrypoint) or None,
            command=list(spec.command) or None,
            environment=environment,
            working_dir=spec.working_dir or None,
            name=f"symbi-session-{req.session_id}",
            stdin_open=True,
            detach=False,  # with stdin_open this sets StdinOnce: our half-close then closes the process's stdin
            volumes=volumes,
            **options,
        )
    except ImageNotFound:
        _discard(scratch)
        raise FailedPreconditionError(
            f"image {spec.image} is not on node {runner.node}; images are built locally"
        ) from None
    except APIError as exc:
        _discard(scratch)
        raise InvalidArgumentError(f"Docker refused the session container: {exc.explanation or exc}") from None
    except (DockerException, requests.exceptions.RequestException) as exc:
        _discard(scratch)
        raise UnavailableError(f"Docker does not answer: {exc}") from None
    session = DockerSession(container, runtime, scratch, loop, on_frame, on_end)
    try:
        session.attach()
        container.start()
    except (DockerException, requests.exceptions.RequestException, OSError) as exc:
        session._remove()
        raise FailedPreconditionError(f"the session container did not start: {exc}") from None
    session.begin()
    return session


def _discard(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
